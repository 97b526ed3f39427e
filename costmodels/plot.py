"""Measured vs fitted latency per layer (matplotlib, no display needed)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from spartan_service.costmodels.schema import Profile, validate_cost_model, validate_profile


def plot_fit(profile: dict[str, Any] | Profile, cost_model: dict[str, Any],
             path: str | Path) -> Path:
    """One panel per profiled layer: the samples and the fitted line; saved as PNG at path."""
    # Figure without pyplot: no global state, no GUI backend (works in API and worker processes).
    from matplotlib.figure import Figure

    prof, cm = validate_profile(profile), validate_cost_model(cost_model)
    n = len(prof.layers)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, lay in zip(axes.flat, prof.layers, strict=False):
        x = [s.nnz_blocks for s in lay.samples]
        y = [s.latency for s in lay.samples]
        ax.scatter(x, y, s=14, label="measured")
        fit = cm.layers.get(lay.name)
        if fit is not None:
            xs = [0, max(x)]
            quality = ", ".join(f"{k} {v:.3f}" for k, v in (("R2", fit.r2), ("MAPE", fit.mape))
                                if v is not None)
            ax.plot(xs, [fit.intercept + fit.slope * v for v in xs], color="C1",
                    label=f"fit ({quality})" if quality else "fit")
        kernel = f" [{lay.kernel}]" if lay.kernel else ""
        ax.set_title(f"{lay.name}{kernel}", fontsize=9)
        ax.set_xlabel(f"nonzero {lay.block[0]}x{lay.block[1]} blocks")
        ax.set_ylabel(f"latency ({prof.unit})")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.suptitle(f"cost model fit: {prof.device}", fontsize=10)
    out = Path(path)
    fig.savefig(out, dpi=110)
    return out
