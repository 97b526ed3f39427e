"""Structured sparsity against a fitted latency model: does it pay, and is the promise kept?

For a CNN with BatchNorm, a CIFAR ResNet and an MLP on Fashion-MNIST (scikit-learn's digits
where it is absent): train dense; profile the model's layers at kept widths at batch 64 and 1
and fit structured cost models (costmodels.profile_channels / fit_profile); prune channels
(Spartan, global allocation, latency costs re-linearised each step) from the dense weights to
70 / 50 / 30% of the dense latency; prune uniformly (the same fraction of every layer group,
parameter costs) to the parameter count of the 50% model; shrink every result (spartan.shrink)
and time it with the dense model round-robin at batch 64 and 1.

    python -m benchmarks.structured [--quick] [--seeds N] [--dataset auto|fashion-mnist|digits]

Prints one JSON object on its last line; targets (issue 12): speedup >= 1.8x on the CNN at 50%
(batch 64) within 1 point of dense accuracy, latency-aware >= 1.15x faster than uniform at
accuracy within 0.5 point, whole-model prediction MAPE <= 10%.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import statistics
import time
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from benchmarks.structured_train import accuracy, load_data, make, train
from spartan import SparsifierConfig, shrink
from spartan.channel_costs import LayerCost, total_cost
from spartan_service.costmodels import (
    channel_budget_fraction,
    channel_costs,
    fit_profile,
    profile_channels,
)
from spartan_service.costmodels.channel_bridge import channel_cost_split
from spartan_service.costmodels.timing import keep_freed_memory

log = logging.getLogger("benchmarks.structured")
FRACTIONS = (0.7, 0.5, 0.3)


def cost_model(model: nn.Module, x: Tensor, batch: int, quick: bool) -> dict[str, Any]:
    prof = profile_channels(model, x, batch=batch, quick=quick, progress=False)
    return fit_profile(prof)


def predicted(cm: dict[str, Any], dense: nn.Module, x: Tensor, graph: Any, keep: Tensor
              ) -> float:
    """The cost model's whole-model latency at the kept items `keep` of `graph`."""
    fixed, _ = channel_cost_split(cm, dense, x, graph=graph)
    costs = {n: LayerCost.from_dict(n, c) for n, c in
             channel_costs(cm, dense, x, graph=graph).items()}
    return fixed + total_cost(graph, costs, keep)


def pruned(dense: nn.Module, data: tuple[Tensor, ...], epochs: int, seed: int,
           config: SparsifierConfig, costs: Any, cms: dict[int, dict[str, Any]]
           ) -> dict[str, Any]:
    model = copy.deepcopy(dense)
    x = data[0][:8]
    torch.manual_seed(seed)
    sp = train(model, data, epochs, seed, config, costs)
    assert sp is not None
    graph, keep = sp.graph, sp.item_mask()  # type: ignore[attr-defined]
    pred = {b: predicted(cm, dense, x, graph, keep) for b, cm in cms.items()}
    rep = sp.finalize()
    small = shrink(model.eval(), x).eval()
    params = sum(p.numel() for p in small.parameters())
    from spartan.channel_costs import widths

    kept = {n: [int(w) for w in widths(lay, keep)] for n, lay in graph.layers.items()}
    return {"model": small, "graph": graph, "keep": keep, "widths": kept,
            "accuracy": accuracy(small, data[2], data[3]), "predicted": pred,
            "params": params, "kept_cost_fraction": rep.kept_cost_fraction}


def uniform_latency_fraction(cm: dict[str, Any], dense: nn.Module, x: Tensor,
                             target: float) -> float:
    """The width fraction whose uniformly shrunk model the cost model puts at `target` ms."""
    from spartan.channels import trace_channels
    from spartan_service.costmodels.structured import _uniform_drop

    graph = trace_channels(dense, x)
    lo, hi = 0.02, 1.0
    for _ in range(12):
        mid = (lo + hi) / 2
        if predicted(cm, dense, x, graph, ~_uniform_drop(graph, mid)) > target:
            hi = mid
        else:
            lo = mid
    return (lo + hi) / 2


def uniform_fraction(dense: nn.Module, x: Tensor, params: int) -> float:
    """The width fraction whose uniformly shrunk model has `params` parameters (bisection)."""
    from spartan.channels import trace_channels
    from spartan.shrink import apply_plan, shrink_plan
    from spartan_service.costmodels.structured import _uniform_drop

    graph = trace_channels(dense, x)
    lo, hi = 0.02, 1.0
    for _ in range(12):
        mid = (lo + hi) / 2
        small = apply_plan(copy.deepcopy(dense), shrink_plan(graph, _uniform_drop(graph, mid)))
        if sum(p.numel() for p in small.parameters()) > params:
            hi = mid
        else:
            lo = mid
    return (lo + hi) / 2


def measure(dense: nn.Module, results: dict[str, Any], x: Tensor, batch: int, quick: bool,
            repeats: int) -> dict[str, Any]:
    """Re-profile the dense model at `batch` with the shrunk models timed in the same round robin
    (profile_channels(alongside=...)): measured and predicted latency under the same load."""
    names = list(results)
    xb = x[torch.arange(batch) % x.shape[0]]
    fns = [partial(m, xb) for m in [dense] + [results[n]["model"] for n in names]]
    with torch.inference_mode():
        prof = profile_channels(dense, xb, quick=quick, progress=False, repeats=repeats,
                                alongside=fns)
    cm = fit_profile(prof)
    times = [row["latency"] for row in prof["alongside"]]
    out = {"dense_ms": times[0], "dense_predicted_now": sum(channel_cost_split(cm, dense, x)),
           "fit_whole_model_mape": cm.get("calibration", {}).get("whole_model_mape")}
    for n, t in zip(names, times[1:], strict=True):
        r = results[n]
        r[f"measured_ms_b{batch}"], r[f"speedup_b{batch}"] = t, times[0] / t
        r.setdefault("predicted_now", {})[batch] = predicted(cm, dense, x, r["graph"],
                                                             r["keep"])
    return out


def run_arch(arch: str, data: tuple[Tensor, ...], args: argparse.Namespace) -> dict[str, Any]:
    shape = tuple(data[0].shape[1:])
    epochs, tune = args.dense_epochs, args.tune_epochs
    out: dict[str, Any] = {"runs": []}
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        torch.manual_seed(seed)
        dense = make(arch, shape, args.quick)
        train(dense, data, epochs, seed)
        dense.eval()
        x64 = data[0][:64]
        cms = {64: cost_model(dense, x64, 64, args.quick),
               1: cost_model(dense, x64[:1], 1, args.quick)}
        costs64 = channel_costs(cms[64], dense, x64[:8])
        # the dense reference trained as long as the pruned models (dense + tune epochs)
        longer = copy.deepcopy(dense)
        train(longer, data, tune, seed + 1000)
        run: dict[str, Any] = {"seed": seed, "dense_accuracy": accuracy(longer, data[2], data[3]),
                               "dense_accuracy_before_tune": accuracy(dense, data[2], data[3]),
                               "fit": {b: cm.get("calibration", {}).get("whole_model_mape")
                                       for b, cm in cms.items()}}
        results, run["refused"] = {}, {}
        for frac in FRACTIONS:
            try:
                budget = channel_budget_fraction(cms[64], dense, x64[:8], frac)
            except ValueError as exc:  # e.g. at or below the fitted fixed cost: say so, go on
                run["refused"][f"latency_{int(frac * 100)}"] = str(exc)
                continue
            cfg = SparsifierConfig(structure="channels", budget=budget, min_keep=args.min_keep,
                                   warmup_frac=0.5, finetune_frac=args.finetune_frac)
            results[f"latency_{int(frac * 100)}"] = pruned(dense, data, tune, seed, cfg,
                                                            costs64, cms)
        for mk in args.min_keep_alt:  # the 50% budget again under another floor
            cfg = SparsifierConfig(structure="channels", budget=channel_budget_fraction(
                cms[64], dense, x64[:8], 0.5), min_keep=mk, warmup_frac=0.5,
                finetune_frac=args.finetune_frac)
            results[f"latency_50_min_keep_{mk:g}"] = pruned(dense, data, tune, seed, cfg,
                                                             costs64, cms)
        # uniform widths at the parameter count, and at the predicted latency, of the 50% model
        uniform = {"uniform_params": uniform_fraction(dense, x64[:8],
                                                      results["latency_50"]["params"]),
                   "uniform_latency": uniform_latency_fraction(
                       cms[64], dense, x64[:8], results["latency_50"]["predicted"][64])}
        for name, frac in uniform.items():
            cfg = SparsifierConfig(structure="channels", allocation="uniform",
                                   min_keep=args.min_keep, budget=frac, warmup_frac=0.5,
                                   finetune_frac=args.finetune_frac)
            results[name] = pruned(dense, data, tune, seed, cfg, None, cms)
            results[name]["width_fraction"] = frac
        for batch in (64, 1):
            m = measure(dense, results, data[2][:64], batch, args.quick, args.repeats)
            run[f"dense_ms_b{batch}"] = m.pop("dense_ms")
            run[f"measure_b{batch}"] = m
        run["dense_predicted_ms"] = {b: sum(channel_cost_split(cm, dense, x64[:8]))
                                     for b, cm in cms.items()}
        for r in results.values():
            for key in ("model", "graph", "keep"):
                r.pop(key)
        run["results"] = results
        out["runs"].append(run)
    return out


def _uniform_at_equal_accuracy(run: dict[str, Any], name: str = "latency_50") -> float:
    """Batch-64 latency of uniform widths at the accuracy of run `name`: linear in accuracy
    between the two uniform runs and the dense model (clamped to the dense latency)."""
    res = run["results"]
    pts = sorted({(res[k]["accuracy"], res[k]["measured_ms_b64"])
                  for k in ("uniform_params", "uniform_latency")} |
                 {(run["dense_accuracy"], run["dense_ms_b64"])})
    acc = res[name]["accuracy"]
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    return float(min(np.interp(acc, xs, ys), run["dense_ms_b64"]))


def summarise(arch: str, res: dict[str, Any]) -> dict[str, Any]:
    runs = res["runs"]

    def mean(f: Any) -> float:
        return statistics.fmean(f(r) for r in runs)

    s: dict[str, Any] = {"dense_accuracy": mean(lambda r: r["dense_accuracy"])}
    errs = []
    for r in runs:
        for v in r["results"].values():
            for b in (64, 1):
                errs.append(abs(v["predicted"][b] - v[f"measured_ms_b{b}"])
                            / v[f"measured_ms_b{b}"])
        for b in (64, 1):
            errs.append(abs(r["dense_predicted_ms"][b] - r[f"dense_ms_b{b}"])
                        / r[f"dense_ms_b{b}"])
    s["prediction_mape"] = statistics.fmean(errs)
    # The same with the cost model profiled in the measuring window (alongside the measured
    # models): the error of the model's shape, free of the machine's drift since training.
    now = []
    for r in runs:
        for b in (64, 1):
            for v in r["results"].values():
                now.append(abs(v["predicted_now"][b] - v[f"measured_ms_b{b}"])
                           / v[f"measured_ms_b{b}"])
            md = r[f"dense_ms_b{b}"]
            now.append(abs(r[f"measure_b{b}"]["dense_predicted_now"] - md) / md)
    s["prediction_mape_profiled_alongside"] = statistics.fmean(now)
    lat50, uni = (mean(lambda r, k=k: r["results"][k]["measured_ms_b64"])
                  for k in ("latency_50", "uniform_params"))
    s["latency50_vs_uniform_b64"] = uni / lat50
    s["accuracy_gap_latency50_vs_uniform"] = mean(
        lambda r: r["results"]["latency_50"]["accuracy"] - r["results"]["uniform_params"][
            "accuracy"])
    s["uniform_ms_at_equal_accuracy_b64"] = mean(_uniform_at_equal_accuracy)
    s["latency50_vs_uniform_equal_accuracy_b64"] = s["uniform_ms_at_equal_accuracy_b64"] / lat50
    s["floors_at_50"] = {  # the 50% budget under each floor the run tried
        name: {"accuracy_drop": mean(lambda r, n=name: r["dense_accuracy"]
                                     - r["results"][n]["accuracy"]),
               "speedup_b64": mean(lambda r, n=name: r["results"][n]["speedup_b64"]),
               "vs_uniform_equal_accuracy_b64": mean(
                   lambda r, n=name: _uniform_at_equal_accuracy(r, n)
                   / r["results"][n]["measured_ms_b64"])}
        for name in runs[0]["results"] if name.startswith("latency_50")}
    s["speedup50_b64"] = mean(lambda r: r["results"]["latency_50"]["speedup_b64"])
    s["accuracy_drop50"] = s["dense_accuracy"] - mean(
        lambda r: r["results"]["latency_50"]["accuracy"])
    return s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--dataset", default="auto",
                        choices=["auto", "fashion-mnist", "digits"])
    parser.add_argument("--archs", default="cnn_bn,resnet,mlp")
    parser.add_argument("--train-size", type=int, default=None,
                        help="training images (default 3000 quick, all otherwise)")
    parser.add_argument("--dense-epochs", type=int, default=None)
    parser.add_argument("--tune-epochs", type=int, default=None)
    parser.add_argument("--min-keep", type=float, default=0.1)
    parser.add_argument("--finetune-frac", type=float, default=0.3)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--min-keep-alt", type=float, nargs="*", default=[],
                        help="also prune to 50%% of dense latency under these floors")
    args = parser.parse_args()
    args.seeds = args.seeds or (1 if args.quick else 3)
    args.repeats = args.repeats or (15 if args.quick else 41)
    args.dense_epochs = args.dense_epochs or (2 if args.quick else 15)
    args.tune_epochs = args.tune_epochs or (2 if args.quick else 10)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    keep_freed_memory()
    name, *data = load_data(args.dataset, args.quick, args.train_size)
    start = time.perf_counter()
    out: dict[str, Any] = {"benchmark": "structured", "dataset": name, "quick": args.quick,
                           "seeds": args.seeds, "threads": 1, "train_size": len(data[0]),
                           "test_size": len(data[2]), "dense_epochs": args.dense_epochs,
                           "tune_epochs": args.tune_epochs, "min_keep": args.min_keep,
                           "finetune_frac": args.finetune_frac, "archs": {}}
    for arch in args.archs.split(","):
        res = run_arch(arch, tuple(data), args)
        out["archs"][arch] = {"summary": summarise(arch, res), **res}
        log.warning("%s: %s", arch, json.dumps(out["archs"][arch]["summary"]))
    cnn = out["archs"].get("cnn_bn", {}).get("summary", {})
    sums = [a["summary"] for a in out["archs"].values()]
    out["targets"] = {
        "cnn_speedup50_b64>=1.8": cnn.get("speedup50_b64", 0.0) >= 1.8,
        "cnn_accuracy_drop50<=1pt": cnn.get("accuracy_drop50", 1.0) <= 0.01,
        "latency_aware>=1.15x_uniform_at_equal_accuracy": all(
            s["latency50_vs_uniform_equal_accuracy_b64"] >= 1.15 for s in sums),
        "prediction_mape<=10%": all(s["prediction_mape"] <= 0.10 for s in sums),
        "prediction_mape_profiled_alongside<=10%": all(
            s["prediction_mape_profiled_alongside"] <= 0.10 for s in sums),
    }
    out["seconds"] = time.perf_counter() - start
    print(json.dumps(out))


if __name__ == "__main__":
    main()
