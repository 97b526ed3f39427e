"""Fashion-MNIST in the quality benchmark: LeNet-300-100 (an MLP) and a CNN with BatchNorm at
90 / 95 / 98% sparsity, dense / spartan / dual_averaging / imp, mean and 95% interval over seeds
(Student's t). The data is Debian's dataset-fashion-mnist package, read by the worker's own
source (worker/arrays.py); the package's 10k test set is the held-out set. Training as in
benchmarks/quality_train.py (SGD, momentum 0.9, lr 0.05, batch 64; SparsifierConfig defaults).

Full: 5 seeds, all 60k training images, 15 epochs. --quick: 2 seeds, the first 6000 training
and 2000 test images, 2 epochs: a smoke run whose figures say little about the methods.
"""

from __future__ import annotations

import itertools
import logging
import math
from typing import Any

import numpy as np

from benchmarks.quality_train import Setting, train, with_seed

log = logging.getLogger("benchmarks.quality")
METHODS = ("spartan", "dual_averaging", "imp")
MODELS = ("lenet300", "cnnbn")
SPARSITIES = (0.9, 0.95, 0.98)


def plan(quick: bool) -> dict[str, Any]:
    if quick:
        return {"dataset": "fashion-quick", "seeds": [0, 1], "epochs": 2}
    return {"dataset": "fashion", "seeds": [0, 1, 2, 3, 4], "epochs": 15}


def interval(values: list[float]) -> dict[str, Any]:
    """Mean and the half-width of its 95% confidence interval (t distribution)."""
    from scipy.stats import t

    n = len(values)
    mean = float(np.mean(values))
    if n < 2:
        return {"mean": mean, "ci95": None, "n": n}
    half = float(t.ppf(0.975, n - 1) * np.std(values, ddof=1) / math.sqrt(n))
    return {"mean": mean, "ci95": half, "n": n, "values": values}


def grid(quick: bool) -> dict[str, Any]:
    p = plan(quick)
    rows: list[dict[str, Any]] = []
    cases = [("dense", 0.0)] + list(itertools.product(METHODS, SPARSITIES))
    for model, (method, sparsity) in itertools.product(MODELS, cases):
        base = Setting(p["dataset"], model, method, sparsity, epochs=p["epochs"])
        runs = [train(with_seed(base, s)) for s in p["seeds"]]
        for r in runs:
            log.info("%-52s acc %6.2f density %.4f (%.1f s)", r.setting.label(), r.accuracy,
                     r.density, r.seconds)
        rows.append({"model": model, "method": method, "sparsity": sparsity,
                     "accuracy": interval([r.accuracy for r in runs]),
                     "density": float(np.mean([r.density for r in runs])),
                     "seconds": float(np.mean([r.seconds for r in runs]))})
    return {"plan": p, "rows": rows, "table_markdown": table(rows)}


def table(rows: list[dict[str, Any]]) -> str:
    def cell(r: dict[str, Any] | None) -> str:
        if r is None:
            return "-"
        a = r["accuracy"]
        return f"{a['mean']:.2f}" + (f" ± {a['ci95']:.2f}" if a["ci95"] is not None else "")

    lines = ["| model | sparsity | dense | spartan | dual_averaging | imp |",
             "| --- | --- | --- | --- | --- | --- |"]
    for model in MODELS:
        dense = next(r for r in rows if r["model"] == model and r["method"] == "dense")
        for sp in SPARSITIES:
            cells = [cell(next((r for r in rows if r["model"] == model
                                and r["method"] == m and r["sparsity"] == sp), None))
                     for m in METHODS]
            lines.append(f"| {model} | {sp:.0%} | {cell(dense)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
