"""The latency payoff: Spartan driven by a fitted latency cost model vs a parameter budget.

On this CPU: profile the model's layers (costmodels.profiler, kernel "auto": each layer gets
the kernel that is fastest for it, CSR or dense) at the inference batch, fit the cost model
(spartan_service.costmodels.fit), then train two sweeps of Spartan runs:
- latency-aware: per-block costs from the cost model (costmodels.bridge.block_costs) and a
  budget in ms (bridge.budget_fraction);
- parameter budget: one per weight, budget = density.
The sweeps share their points: the latency target of point i is the cost model's prediction
for the model with every layer kept at density d_i. Every final model runs end to end through
the kernels the profile chose (spartan.kernels.apply_kernels), timed round-robin together
with the dense model (dense kernels). Headline: the latency-aware point at the middle target
against (a) the fastest parameter-budget point whose accuracy is within 0.5 point of it or
better, (b) the parameter-budget accuracy at the same measured latency (interpolated).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from benchmarks.quality_train import RunResult, Setting, build, dataset, train

log = logging.getLogger("benchmarks.quality")
PAYOFF_DATASET, PAYOFF_MODEL, INFER_BATCH = "mnist1d", "mlp512", 256
EQUAL_ACC_TOL = 0.5


def profile_and_fit(quick: bool) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    from spartan_service.costmodels.fit import fit_profile
    from spartan_service.costmodels.profiler import profile_model

    data = dataset(PAYOFF_DATASET)
    model = build(PAYOFF_MODEL, PAYOFF_DATASET, 0)
    x = data.x_val[torch.arange(INFER_BATCH) % len(data.x_val)]
    prof = profile_model(model, x, quick=quick, progress=False)
    cm = fit_profile(prof)
    kernels = {lay["name"]: lay["kernel"] for lay in prof["layers"]}
    log.info("payoff cost model: kernels %s; slope per weight (us) %s; cv mape %s", kernels,
             {k: round(v["slope"] * 1e3, 5) for k, v in cm["layers"].items()},
             {k: round(v["mape"], 3) for k, v in cm["layers"].items()})
    return prof, cm, kernels


def uniform_latency(cm: dict[str, Any], prof: dict[str, Any], density: float) -> float:
    """Predicted ms with every layer kept at `density` (the sweeps' shared latency targets)."""
    from spartan_service.costmodels.fit import predict_latency

    nnz = {lay["name"]: max(1, round(density * _blocks(lay))) for lay in prof["layers"]}
    return predict_latency(cm, nnz)


def _blocks(lay: dict[str, Any]) -> int:
    r, c = lay["block"]
    return lay["shape"][0] * lay["shape"][1] // (r * c)


def measure(runs: list[RunResult], kernels: dict[str, str], quick: bool) -> tuple[list[float],
                                                                                   float]:
    """Median end-to-end ms of each final model (profile's kernels) and of the dense model."""
    from spartan.kernels import apply_kernels
    from spartan.timing import time_round_robin

    data = dataset(PAYOFF_DATASET)
    x = data.x_val[torch.arange(INFER_BATCH) % len(data.x_val)]
    runners = [apply_kernels(r.model, kernels) for r in runs]
    runners.append(apply_kernels(build(PAYOFF_MODEL, PAYOFF_DATASET, 0),
                                 dict.fromkeys(kernels, "dense")))
    with torch.inference_mode():
        fns = [lambda m=m: m(x) for m in runners]
        timed = time_round_robin(fns, repeats=10 if quick else 40, warmup=2 if quick else 5)
    return [t for t, _ in timed[:-1]], timed[-1][0]


def payoff(densities: list[float], seeds: list[int], epochs: int, quick: bool
           ) -> dict[str, Any]:
    """Both sweeps, measured; see the module doc. Accuracies are means over seeds."""
    from spartan_service.costmodels.bridge import block_costs, budget_fraction

    prof, cm, kernels = profile_and_fit(quick)
    template = build(PAYOFF_MODEL, PAYOFF_DATASET, 0)
    costs = block_costs(cm, template)
    points: list[dict[str, Any]] = []
    all_runs: list[RunResult] = []
    for d in densities:
        target = uniform_latency(cm, prof, d)
        frac = budget_fraction(cm, template, budget=target, unit="ms")
        for kind in ("latency_aware", "param_budget"):
            runs = []
            for seed in seeds:
                s = Setting(PAYOFF_DATASET, PAYOFF_MODEL, "spartan", 1.0 - d, seed=seed,
                            epochs=epochs)
                if kind == "latency_aware":
                    runs.append(train(s, costs=costs, budget=frac))
                else:
                    runs.append(train(s))
                log.info("payoff %s d=%.3f seed %d: acc %.2f density %.4f", kind, d, seed,
                         runs[-1].accuracy, runs[-1].density)
            all_runs += runs
            points.append({"kind": kind, "uniform_density": d, "target_ms": target,
                           "budget_fraction": frac if kind == "latency_aware" else d,
                           "runs": runs})
    lat, dense_ms = measure(all_runs, kernels, quick)
    it = iter(lat)
    for p in points:
        runs = p.pop("runs")
        ms = [next(it) for _ in runs]
        p |= {"accuracy": float(np.mean([r.accuracy for r in runs])),
              "accuracy_std": float(np.std([r.accuracy for r in runs])),
              "measured_latency_ms": float(np.mean(ms)),
              "density": float(np.mean([r.density for r in runs]))}
    return {"dataset": PAYOFF_DATASET, "model": PAYOFF_MODEL, "infer_batch": INFER_BATCH,
            "kernels": kernels, "dense_latency_ms": dense_ms, "points": points,
            "cost_model": {k: {"intercept": v["intercept"], "slope": v["slope"],
                               "mape": v["mape"]} for k, v in cm["layers"].items()},
            **headline(points)}


def headline(points: list[dict[str, Any]]) -> dict[str, Any]:
    la = [p for p in points if p["kind"] == "latency_aware"]
    pb = sorted((p for p in points if p["kind"] == "param_budget"),
                key=lambda p: p["measured_latency_ms"])
    ref = la[len(la) // 2]
    close = [p for p in pb if p["accuracy"] >= ref["accuracy"] - EQUAL_ACC_TOL]
    match = close[0] if close else max(pb, key=lambda p: p["accuracy"])
    lat = [p["measured_latency_ms"] for p in pb]
    acc_equal = float(np.interp(ref["measured_latency_ms"], lat, [p["accuracy"] for p in pb]))
    pick = ("accuracy", "accuracy_std", "measured_latency_ms", "density", "uniform_density")
    return {
        "latency_aware": {k: ref[k] for k in pick},
        "param_budget": {k: match[k] for k in pick}
        | {"within_tolerance": bool(close), "tolerance_points": EQUAL_ACC_TOL},
        "latency_ratio_equal_accuracy": match["measured_latency_ms"] / ref["measured_latency_ms"],
        "equal_latency": {"measured_latency_ms": ref["measured_latency_ms"],
                          "latency_aware_accuracy": ref["accuracy"],
                          "param_budget_accuracy_interpolated": acc_equal,
                          "param_budget_latency_range_ms": [min(lat), max(lat)]},
    }
