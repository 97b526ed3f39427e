"""Fashion-MNIST in the quality benchmark: LeNet-300-100 (an MLP) and a CNN with BatchNorm at
90 / 95 / 98% sparsity, dense / spartan / dual_averaging / imp, mean and 95% interval over seeds
(Student's t). The data is Debian's dataset-fashion-mnist package, read by the worker's own
source (worker/arrays.py); the package's 10k test set is the held-out set. Training as in
benchmarks/quality_train.py (SGD, momentum 0.9, lr 0.05, batch 64; SparsifierConfig defaults,
or the Spartan settings given with --spartan).

Full: 5 seeds, all 60k training images, 15 epochs. --quick: 2 seeds, the first 6000 training
and 2000 test images, 2 epochs: a smoke run whose figures say little about the methods.

    python -m benchmarks.quality_fashion [--seeds 5] [--first-seed 0] [--epochs 15] [--train N]
        [--models lenet300 cnnbn] [--sparsities 0.9 0.95 0.98] [--spartan KEY=VALUE ...]
    python -m benchmarks.quality_fashion --tune [--train N] [--epochs E] [--seeds S]

--tune compares Spartan settings (CANDIDATES) at 95% on the training split only: it trains on
the first N training images and validates on the last 10k training images (TUNE_HOLDOUT), never
reading the test set, and names the best by mean validation accuracy.
Progress on stderr; one JSON object on the last stdout line.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import sys
from typing import Any

import numpy as np

from benchmarks.quality_train import Setting, train, with_seed

log = logging.getLogger("benchmarks.quality")
METHODS = ("spartan", "dual_averaging", "imp")
MODELS = ("lenet300", "cnnbn")
SPARSITIES = (0.9, 0.95, 0.98)
# Spartan settings tried by --tune (SparsifierConfig fields; the first is the default).
CANDIDATES: tuple[tuple[tuple[str, Any], ...], ...] = (
    (),
    (("beta_final", 100.0),),
    (("beta_final", 5.0),),
    (("warmup_frac", 0.5),),
    (("warmup_frac", 0.5), ("beta_final", 100.0)),
)


def plan(quick: bool, seeds: int | None = None, epochs: int | None = None,
         train_size: int | None = None, first_seed: int = 0) -> dict[str, Any]:
    if quick:
        p: dict[str, Any] = {"dataset": "fashion-quick", "seeds": [0, 1], "epochs": 2}
    else:
        p = {"dataset": "fashion", "seeds": [0, 1, 2, 3, 4], "epochs": 15}
    if seeds is not None:
        p["seeds"] = list(range(first_seed, first_seed + seeds))
    if epochs is not None:
        p["epochs"] = epochs
    if train_size is not None:
        p["dataset"] = f"fashion:{train_size}"
    return p


def interval(values: list[float]) -> dict[str, Any]:
    """Mean and the half-width of its 95% confidence interval (t distribution)."""
    from scipy.stats import t

    n = len(values)
    mean = float(np.mean(values))
    if n < 2:
        return {"mean": mean, "ci95": None, "n": n}
    half = float(t.ppf(0.975, n - 1) * np.std(values, ddof=1) / math.sqrt(n))
    return {"mean": mean, "ci95": half, "n": n, "values": values}


def grid(quick: bool, seeds: int | None = None, epochs: int | None = None,
         train_size: int | None = None, models: tuple[str, ...] = MODELS,
         sparsities: tuple[float, ...] = SPARSITIES,
         spartan: tuple[tuple[str, Any], ...] = (), first_seed: int = 0) -> dict[str, Any]:
    p = plan(quick, seeds, epochs, train_size, first_seed)
    rows: list[dict[str, Any]] = []
    cases = [("dense", 0.0)] + list(itertools.product(METHODS, sparsities))
    for model, (method, sparsity) in itertools.product(models, cases):
        base = Setting(p["dataset"], model, method, sparsity, epochs=p["epochs"],
                       overrides=spartan if method == "spartan" else ())
        runs = [train(with_seed(base, s)) for s in p["seeds"]]
        for r in runs:
            log.info("%-52s acc %6.2f density %.4f (%.1f s)", r.setting.label(), r.accuracy,
                     r.density, r.seconds)
        rows.append({"model": model, "method": method, "sparsity": sparsity,
                     "accuracy": interval([r.accuracy for r in runs]),
                     "density": float(np.mean([r.density for r in runs])),
                     "seconds": float(np.mean([r.seconds for r in runs]))})
    return {"plan": {**p, "spartan": dict(spartan)}, "rows": rows,
            "table_markdown": table(rows, models, sparsities), "verdicts": verdicts(rows)}


def verdicts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model and sparsity: is Spartan ahead of both baselines with intervals apart?"""
    out = []
    for (model, sp), group in itertools.groupby(
            sorted((r for r in rows if r["method"] != "dense"),
                   key=lambda r: (r["model"], r["sparsity"])),
            key=lambda r: (r["model"], r["sparsity"])):
        by = {r["method"]: r["accuracy"] for r in group}
        if "spartan" not in by:
            continue
        s = by["spartan"]
        lo = s["mean"] - (s["ci95"] or 0.0)
        best = {m: a["mean"] + (a["ci95"] or 0.0) for m, a in by.items() if m != "spartan"}
        out.append({"model": model, "sparsity": sp,
                    "ahead": all(s["mean"] > a["mean"] for m, a in by.items() if m != "spartan"),
                    "outside_interval": all(lo > hi for hi in best.values())})
    return out


def tune(epochs: int, seeds: int, train_size: int,
         models: tuple[str, ...] = ("lenet300",), sparsity: float = 0.95) -> dict[str, Any]:
    """Spartan settings compared on a split of the training images (test set unread)."""
    dataset = f"fashion-tune:{train_size}"
    rows = []
    for model, overrides in itertools.product(models, CANDIDATES):
        base = Setting(dataset, model, "spartan", sparsity, epochs=epochs, overrides=overrides)
        runs = [train(with_seed(base, s)) for s in range(seeds)]
        acc = interval([r.accuracy for r in runs])
        log.info("tune %-60s val %.2f", base.label(), acc["mean"])
        rows.append({"model": model, "overrides": dict(overrides), "val_accuracy": acc})
    score = {json.dumps(dict(c)): float(np.mean([r["val_accuracy"]["mean"] for r in rows
                                                 if r["overrides"] == dict(c)]))
             for c in CANDIDATES}
    best = max(score, key=score.__getitem__)
    return {"dataset": dataset, "epochs": epochs, "seeds": seeds, "sparsity": sparsity,
            "rows": rows, "mean_by_setting": score, "best": json.loads(best)}


def table(rows: list[dict[str, Any]], models: tuple[str, ...] = MODELS,
          sparsities: tuple[float, ...] = SPARSITIES) -> str:
    def cell(r: dict[str, Any] | None) -> str:
        if r is None:
            return "-"
        a = r["accuracy"]
        return f"{a['mean']:.2f}" + (f" ± {a['ci95']:.2f}" if a["ci95"] is not None else "")

    lines = ["| model | sparsity | dense | spartan | dual_averaging | imp |",
             "| --- | --- | --- | --- | --- | --- |"]
    for model in models:
        dense = next(r for r in rows if r["model"] == model and r["method"] == "dense")
        for sp in sparsities:
            cells = [cell(next((r for r in rows if r["model"] == model
                                and r["method"] == m and r["sparsity"] == sp), None))
                     for m in METHODS]
            lines.append(f"| {model} | {sp:.0%} | {cell(dense)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _setting(text: str) -> tuple[str, Any]:
    key, _, value = text.partition("=")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--tune", action="store_true", help="compare Spartan settings (train split)")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--first-seed", type=int, default=0, help="seeds first..first+seeds-1")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--train", type=int, default=None, help="first N training images")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--sparsities", nargs="+", type=float, default=list(SPARSITIES))
    ap.add_argument("--spartan", nargs="*", default=[], help="SparsifierConfig KEY=VALUE")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    import torch

    torch.set_num_threads(args.threads)
    if args.tune:
        out = tune(args.epochs or 3, args.seeds or 1, args.train or 20000, tuple(args.models))
    else:
        out = grid(args.quick, args.seeds, args.epochs, args.train, tuple(args.models),
                   tuple(args.sparsities), tuple(_setting(s) for s in args.spartan),
                   args.first_seed)
        log.info("\n%s", out["table_markdown"])
    print(json.dumps({"benchmark": "quality_fashion", "threads": args.threads, **out}))


if __name__ == "__main__":
    main()
