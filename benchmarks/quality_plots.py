"""Figures of the quality benchmark (matplotlib, Agg: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

METHOD_STYLE = {"spartan": ("C0", "o"), "dual_averaging": ("C1", "s"), "imp": ("C2", "^")}


def plot_accuracy(rows: list[dict[str, Any]], dense: dict[str, dict[str, float]],
                  path: Path) -> None:
    """One panel per dataset/model (1x1 blocks solid, 4x4 dashed): accuracy vs sparsity."""
    from matplotlib.figure import Figure

    panels = sorted({(r["dataset"], r["model"]) for r in rows})
    fig = Figure(figsize=(4.2 * len(panels), 3.6), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (ds, model) in zip(axes, panels, strict=True):
        for block, ls in (("1x1", "-"), ("4x4", "--")):
            for method, (color, marker) in METHOD_STYLE.items():
                pts = sorted((r["sparsity"], r["accuracy"], r["accuracy_std"]) for r in rows
                             if (r["dataset"], r["model"], r["method"], r["block"])
                             == (ds, model, method, block))
                if pts:
                    xs = [100 * p[0] for p in pts]
                    ax.errorbar(xs, [p[1] for p in pts], yerr=[p[2] for p in pts], color=color,
                                marker=marker, ls=ls, ms=4, capsize=2,
                                label=f"{method} {block}")
        d = dense.get(f"{ds}/{model}")
        if d:
            ax.axhline(d["accuracy"], color="gray", ls=":", label="dense")
        ax.set_title(f"{ds} / {model}", fontsize=9)
        ax.set_xlabel("sparsity (%)")
        ax.set_ylabel("test accuracy (%)")
        ax.legend(fontsize=6)
    fig.savefig(path, dpi=110)


def plot_payoff(pay: dict[str, Any], path: Path) -> None:
    """Accuracy vs measured end-to-end latency of both sweeps."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4.2), layout="constrained")
    ax = fig.subplots()
    for i, (kind, label) in enumerate((("latency_aware", "spartan, latency cost model"),
                                       ("param_budget", "spartan, parameter budget"))):
        pts = sorted((p["measured_latency_ms"], p["accuracy"], p["accuracy_std"])
                     for p in pay["points"] if p["kind"] == kind)
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts],
                    color=f"C{i}", marker="o", capsize=2, label=label)
    ax.set_xlabel(f"measured latency (ms, batch {pay['infer_batch']}, this CPU)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{pay['dataset']} / {pay['model']}: dense model "
                 f"{pay['dense_latency_ms']:.2f} ms", fontsize=9)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)


def plot_ablation(rows: list[dict[str, Any]], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.4), layout="constrained")
    ax = fig.subplots()
    labels = [r["label"] for r in rows]
    ax.barh(labels, [r["accuracy"] for r in rows], xerr=[r["accuracy_std"] for r in rows],
            color="C0")
    lo = min(r["accuracy"] - r["accuracy_std"] for r in rows)
    ax.set_xlim(lo - 2, 100)
    ax.set_xlabel("test accuracy (%)")
    ax.set_title(f"ablation: {rows[0]['where']}", fontsize=9)
    ax.tick_params(axis="y", labelsize=7)
    fig.savefig(path, dpi=110)
