"""Does Spartan work? The paper's comparisons at small scale, and the latency payoff.

1. Accuracy vs sparsity (80, 90, 95, 98%) of spartan, dual_averaging (Top-KAST without
   backward sparsity) and imp (iterative magnitude pruning), against dense, on scikit-learn's
   digits and MNIST-1D, with an MLP (256-256) and a small CNN (32-64 channels), unstructured
   and 4x4 blocks; mean and std over seeds. Same schedule for every method (SparsifierConfig
   defaults: warmup 20%, finetune 20%, global allocation), 30 epochs.
2. The latency payoff on this CPU (benchmarks/quality_latency.py): spartan driven by a fitted
   latency cost model vs spartan with a parameter budget, measured end to end.
3. Ablation of beta (init, final) and the schedule (linear, cosine), spartan on digits/MLP.
4. Fashion-MNIST (benchmarks/quality_fashion.py): LeNet-300-100 and a CNN with BatchNorm at
   90 / 95 / 98%, every method, mean and 95% interval over 5 seeds (--quick: 2 seeds, a subset).

    python -m benchmarks.quality [--quick] [--threads N] [--seeds N] [--no-plots]

Progress on stderr; the last stdout line is one JSON object. Writes docs/quality_*.png.
Tai, Tian & Lim, "Spartan: Differentiable Sparsity via Regularized Transportation" (2022).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.quality_train import Setting, train, with_seed

log = logging.getLogger("benchmarks.quality")
DOCS = Path(__file__).resolve().parent.parent / "docs"
METHODS = ("spartan", "dual_averaging", "imp")
ABLATION = [  # (label, SparsifierConfig overrides)
    ("beta 1->20 linear (default)", ()),
    ("beta 1->20 cosine", (("schedule", "cosine"),)),
    ("beta 5->60 linear", (("beta_init", 5.0), ("beta_final", 60.0))),
    ("beta 1->5 linear", (("beta_final", 5.0),)),
    ("beta 20->200 linear", (("beta_init", 20.0), ("beta_final", 200.0))),
    ("beta 5->60 cosine", (("beta_init", 5.0), ("beta_final", 60.0), ("schedule", "cosine"))),
]


def plan(quick: bool) -> dict[str, Any]:
    """What to run. --quick: one seed, fewer sparsities, blocks and ablation rows."""
    if quick:
        return {"seeds": [0], "sparsities": [0.9, 0.95, 0.98],
                "pairs": [("digits", "mlp"), ("digits", "cnn"), ("mnist1d", "mlp"),
                          ("mnist1d", "cnn")],
                "block_pairs": [("digits", "mlp")], "block_sparsities": [0.9, 0.95],
                "epochs": 20, "ablation": ABLATION[:3], "ablation_sparsity": 0.95,
                "payoff_densities": [0.04, 0.1, 0.25], "payoff_epochs": 15}
    return {"seeds": [0, 1, 2], "sparsities": [0.8, 0.9, 0.95, 0.98],
            "pairs": [("digits", "mlp"), ("digits", "cnn"), ("mnist1d", "mlp"),
                      ("mnist1d", "cnn")],
            "block_pairs": [("digits", "mlp"), ("mnist1d", "mlp")],
            "block_sparsities": [0.8, 0.9, 0.95, 0.98],
            "epochs": 30, "ablation": ABLATION, "ablation_sparsity": 0.95,
            "payoff_densities": [0.03, 0.05, 0.08, 0.12, 0.2, 0.3], "payoff_epochs": 30}


def mean_std(settings: list[Setting]) -> dict[str, Any]:
    runs = [train(s) for s in settings]
    for r in runs:
        log.info("%-50s acc %6.2f density %.4f (%.1f s)", r.setting.label(), r.accuracy,
                 r.density, r.seconds)
    accs = [r.accuracy for r in runs]
    return {"accuracy": float(np.mean(accs)), "accuracy_std": float(np.std(accs)),
            "density": float(np.mean([r.density for r in runs])), "seeds": len(runs)}


def accuracy_grid(p: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(sparse rows, dense accuracy per dataset/model)."""
    seeds, epochs = p["seeds"], p["epochs"]
    dense = {}
    for ds, model in p["pairs"]:
        base = Setting(ds, model, "dense", epochs=epochs)
        dense[f"{ds}/{model}"] = mean_std([with_seed(base, s) for s in seeds])
    rows = [{"method": "dense", "sparsity": 0.0, "dataset": k.split("/")[0],
             "model": k.split("/")[1], "block": "1x1", **v} for k, v in dense.items()]
    jobs = [(ds, m, meth, sp, (1, 1)) for (ds, m), sp, meth
            in itertools.product(p["pairs"], p["sparsities"], METHODS)]
    jobs += [(ds, m, meth, sp, (4, 4)) for (ds, m), sp, meth
             in itertools.product(p["block_pairs"], p["block_sparsities"], METHODS)]
    for ds, model, method, sp, block in jobs:
        base = Setting(ds, model, method, sp, block=block, epochs=epochs)
        res = mean_std([with_seed(base, s) for s in seeds])
        rows.append({"method": method, "sparsity": sp, "dataset": ds, "model": model,
                     "block": f"{block[0]}x{block[1]}", **res})
    return rows, dense


def ablation(p: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    sp = p["ablation_sparsity"]
    for label, overrides in p["ablation"]:
        base = Setting("digits", "mlp", "spartan", sp, epochs=p["epochs"], overrides=overrides)
        res = mean_std([with_seed(base, s) for s in p["seeds"]])
        out.append({"label": label, "overrides": dict(overrides), "sparsity": sp,
                    "where": f"spartan, digits/mlp, {sp:.0%} sparsity", **res})
    return out


def table(rows: list[dict[str, Any]], dense: dict[str, Any]) -> str:
    """Markdown table: one line per dataset/model/block, one column per sparsity x method."""
    lines = []
    sparse = [r for r in rows if r["method"] != "dense"]
    for key in sorted({(r["dataset"], r["model"], r["block"]) for r in sparse}):
        sub = [r for r in sparse if (r["dataset"], r["model"], r["block"]) == key]
        d = dense[f"{key[0]}/{key[1]}"]
        for sp in sorted({r["sparsity"] for r in sub}):
            cells = []
            for m in METHODS:
                r = next((r for r in sub if r["sparsity"] == sp and r["method"] == m), None)
                cells.append(f"{r['accuracy']:.2f} ± {r['accuracy_std']:.2f}" if r else "-")
            best = max(METHODS, key=lambda m: next(
                (r["accuracy"] for r in sub if r["sparsity"] == sp and r["method"] == m), -1))
            lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {sp:.0%} | "
                         f"{d['accuracy']:.2f} ± {d['accuracy_std']:.2f} | "
                         + " | ".join(cells) + f" | {best} |")
    head = ("| data | model | block | sparsity | dense | spartan | dual_averaging | imp | best |\n"
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    return head + "\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 seed, fewer settings (< 5 min)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--seeds", type=int, default=None, help="override the number of seeds")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--skip", nargs="*", default=[],
                    choices=["grid", "payoff", "ablation", "fashion"])
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    torch.set_num_threads(args.threads)
    from spartan_service.costmodels.timing import keep_freed_memory, machine_info

    keep_freed_memory()
    p = plan(args.quick)
    if args.seeds:
        p["seeds"] = list(range(args.seeds))
    start = time.perf_counter()
    out: dict[str, Any] = {"benchmark": "quality", "quick": args.quick, "threads": args.threads,
                           "seeds": len(p["seeds"]), "epochs": p["epochs"],
                           "machine": machine_info("cpu"), "torch": torch.__version__}
    rows: list[dict[str, Any]] = []
    dense: dict[str, Any] = {}
    if "grid" not in args.skip:
        rows, dense = accuracy_grid(p)
        log.info("\n%s", table(rows, dense))
        out["table_markdown"] = table(rows, dense)
    out["results"] = rows
    out["dense_accuracy"] = {k: v["accuracy"] for k, v in dense.items()}
    if "payoff" not in args.skip:
        from benchmarks.quality_latency import payoff

        pay = payoff(p["payoff_densities"], p["seeds"], p["payoff_epochs"], args.quick)
        out["latency_aware"], out["param_budget"] = pay["latency_aware"], pay["param_budget"]
        out["payoff"] = pay
        log.info("payoff: latency-aware %s; parameter budget %s", pay["latency_aware"],
                 pay["param_budget"])
    if "ablation" not in args.skip:
        out["ablation"] = ablation(p)
    if "fashion" not in args.skip:
        from benchmarks.quality_fashion import grid as fashion_grid

        out["fashion_mnist"] = fashion_grid(args.quick)
        log.info("\nFashion-MNIST\n%s", out["fashion_mnist"]["table_markdown"])
    if not args.no_plots:
        from benchmarks import quality_plots as qp

        DOCS.mkdir(exist_ok=True)
        if rows:
            qp.plot_accuracy(rows, dense, DOCS / "quality_accuracy.png")
        if "payoff" in out:
            qp.plot_payoff(out["payoff"], DOCS / "quality_latency.png")
        if out.get("ablation"):
            qp.plot_ablation(out["ablation"], DOCS / "quality_ablation.png")
    out["seconds"] = time.perf_counter() - start
    print(json.dumps(out))


if __name__ == "__main__":
    main()
