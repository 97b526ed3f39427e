"""Do fitted latency cost models predict whole sparse models? Measured against predicted.

For an MLP and a small CNN (the worker registry's "mlp" and "cnn") on this CPU: profile every
maskable layer (costmodels.profiler, kernel "auto"), fit (costmodels.fit), then build random
sparse versions of the whole model, each layer at its own random density in [5%, 90%], run them
end to end through the kernels the profile chose (spartan.kernels.apply_kernels) and compare
the median latency with the prediction: overhead + sum of intercept + slope x nonzero blocks.
Baseline predictor, measured in the same run: the dense model's latency scaled by the fraction
of maskable weights kept (what a parameter-count cost model says). Extra configurations, not in
the headline: CSR forced on every CNN layer (convs as im2col + sparse matmul), where latency
varies most with nnz, and a small ViT on dense kernels (nn.MultiheadAttention runs its own
forward), which shows whether the attention projections are counted once. "bias_ms" is the mean
of measured - predicted.

    python -m benchmarks.costmodel [--quick]

Progress on stderr; the last stdout line is one JSON object (target: mape <= 0.10).
Writes docs/costmodel_fit.png and docs/costmodel_prediction.png.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from spartan.kernels import apply_kernels
from spartan.layout import block_grid, expand_blocks, maskable_weights
from spartan.timing import time_round_robin
from spartan_service.costmodels.fit import fit_profile, predict_latency
from spartan_service.costmodels.plot import plot_fit
from spartan_service.costmodels.profiler import layer_name, profile_model
from spartan_service.costmodels.timing import keep_freed_memory

log = logging.getLogger("benchmarks.costmodel")
DOCS = Path(__file__).resolve().parent.parent / "docs"
TARGET_MAPE = 0.10
# name, arch, kwargs, input shape, batch, kernel
CONFIGS: list[tuple[str, str, dict[str, Any], tuple[int, ...], int, str]] = [
    ("mlp", "mlp", {"hidden": [1024, 1024]}, (784,), 64, "auto"),
    ("cnn", "cnn", {"channels": [32, 64], "kernel": 3}, (3, 32, 32), 16, "auto"),
    ("cnn_csr", "cnn", {"channels": [32, 64], "kernel": 3}, (3, 32, 32), 16, "csr"),
    ("vit_dense", "vit", {"dim": 128, "depth": 2, "heads": 4, "mlp_ratio": 2, "patch": 8},
     (3, 32, 32), 16, "dense"),
]


def build(arch: str, kwargs: dict[str, Any], shape: tuple[int, ...]) -> nn.Module:
    from spartan_service.zoo import build_model

    torch.manual_seed(0)
    return build_model(arch, kwargs, shape, 10).eval()


def random_version(model: nn.Module, rng: np.random.Generator, gen: torch.Generator
                   ) -> tuple[nn.Module, dict[str, int], float]:
    """A copy with each maskable layer at a random density in [5%, 90%] (1x1 blocks):
    (model, nonzero blocks per layer, kept fraction of all maskable weights)."""
    import copy

    out = copy.deepcopy(model)
    nnz, kept, total = {}, 0, 0
    for pname, p in maskable_weights(out).items():
        grid = block_grid(p.shape, (1, 1))
        assert grid is not None
        n = grid[0] * grid[1]
        k = max(1, round(rng.uniform(0.05, 0.9) * n))
        flat = torch.zeros(n, dtype=torch.bool)
        flat[torch.randperm(n, generator=gen)[:k]] = True
        with torch.no_grad():
            p.mul_(expand_blocks(flat.reshape(grid), p.shape, (1, 1)))
        nnz[layer_name(pname)] = k
        kept, total = kept + k * p[0, 0].numel(), total + p.numel()
    return out, nnz, kept / total


def _runs_alone(model: nn.Module, pname: str) -> bool:
    """Whether the weight's module is a Linear / Conv2d called on its own (apply_kernels can
    swap it); attention projections are used by their nn.MultiheadAttention directly."""
    mname = pname.rpartition(".")[0]
    parent = mname.rpartition(".")[0]
    return (isinstance(model.get_submodule(mname), (nn.Linear, nn.Conv2d))
            and not isinstance(model.get_submodule(parent), nn.MultiheadAttention))


def run_config(name: str, arch: str, kwargs: dict[str, Any], shape: tuple[int, ...],
               batch: int, kernel: str, versions: int, quick: bool, seed: int
               ) -> dict[str, Any]:
    model = build(arch, kwargs, shape)
    x = torch.randn(batch, *shape)
    t0 = time.perf_counter()
    prof = profile_model(model, x, kernel=kernel, quick=quick, progress=True, seed=seed)
    cm = fit_profile(prof)
    kernels = {lay["name"]: lay["kernel"] for lay in prof["layers"]
               if _runs_alone(model, lay["param"])}
    log.info("%s: profiled and fitted in %.1f s; kernels %s; per-layer cv mape %s", name,
             time.perf_counter() - t0, kernels,
             {k: round(v["mape"], 3) for k, v in cm["layers"].items()})
    rng, gen = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    built = [random_version(model, rng, gen) for _ in range(versions)]
    runners = [apply_kernels(m, kernels) for m, _, _ in built]
    dense_runner = apply_kernels(model, dict.fromkeys(kernels, "dense"))
    with torch.inference_mode():
        fns = [lambda r=r: r(x) for r in [*runners, dense_runner]]
        timed = time_round_robin(fns, repeats=8 if quick else 40, warmup=1 if quick else 3,
                                 seed=seed)
    measured = [t for t, _ in timed[:-1]]
    dense = timed[-1][0]
    predicted = [predict_latency(cm, nnz) for _, nnz, _ in built]
    proxy = [dense * frac for _, _, frac in built]
    return {"name": name, "kernels": kernels, "profile": prof, "cost_model": cm,
            "measured": measured, "predicted": predicted, "proxy": proxy, "dense": dense}


def mape(y: list[float], p: list[float]) -> float:
    return float(np.mean(np.abs(np.array(y) - np.array(p)) / np.array(y)))


def r2(y: list[float], p: list[float]) -> float:
    ya, pa = np.array(y), np.array(p)
    return float(1 - ((ya - pa) ** 2).sum() / ((ya - ya.mean()) ** 2).sum())


def plot(results: list[dict[str, Any]], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 5), layout="constrained")
    ax = fig.subplots()
    for i, res in enumerate(results):
        ax.scatter(res["predicted"], res["measured"], s=18, color=f"C{i}",
                   label=f"{res['name']} (MAPE {mape(res['measured'], res['predicted']):.3f})")
    lo = min(min(r["measured"] + r["predicted"]) for r in results) * 0.9
    hi = max(max(r["measured"] + r["predicted"]) for r in results) * 1.1
    ax.plot([lo, hi], [lo, hi], color="gray", lw=1, ls="--", label="measured = predicted")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("predicted latency (ms)")
    ax.set_ylabel("measured latency (ms, median)")
    ax.set_title("whole sparse models: measured vs cost-model prediction", fontsize=9)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)


def merged_profiles(results: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """One profile / cost model holding every configuration's layers, as 'config/layer'."""
    prof = {"device": results[0]["profile"]["device"], "unit": "ms", "layers": []}
    cm: dict[str, Any] = {"unit": "ms", "device": prof["device"], "layers": {}}
    for res in results:
        for lay in res["profile"]["layers"]:
            prof["layers"].append({**lay, "name": f"{res['name']}/{lay['name']}"})
        for key, lay in res["cost_model"]["layers"].items():
            cm["layers"][f"{res['name']}/{key}"] = lay
    return prof, cm


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: seconds, not minutes")
    parser.add_argument("--versions", type=int, default=None, help="sparse versions per model")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    torch.set_num_threads(args.threads)
    log.info("keep freed memory: %s", keep_freed_memory())
    versions = args.versions or (6 if args.quick else 20)
    start = time.perf_counter()
    results = [run_config(*cfg, versions=versions, quick=args.quick, seed=args.seed)
               for cfg in CONFIGS]
    headline = [r for r in results if r["name"] in ("mlp", "cnn")]
    y = [v for r in headline for v in r["measured"]]
    p = [v for r in headline for v in r["predicted"]]
    q = [v for r in headline for v in r["proxy"]]
    per_model = {r["name"]: {
        "mape": mape(r["measured"], r["predicted"]), "r2": r2(r["measured"], r["predicted"]),
        "bias_ms": float(np.mean(np.array(r["measured"]) - np.array(r["predicted"]))),
        "overhead_ms": r["cost_model"].get("overhead"),
        "proxy_mape": mape(r["measured"], r["proxy"]), "dense_ms": r["dense"],
        "measured_ms": [min(r["measured"]), statistics.median(r["measured"]),
                        max(r["measured"])],
        "kernels": r["kernels"],
        "layer_cv_mape": {k: v["mape"] for k, v in r["cost_model"]["layers"].items()},
    } for r in results}
    for name, m in per_model.items():
        log.info("%s: mape %.3f r2 %.3f bias %+.3f ms (proxy mape %.3f), dense %.3f ms", name,
                 m["mape"], m["r2"], m["bias_ms"], m["proxy_mape"], m["dense_ms"])
    if not args.no_plots:
        DOCS.mkdir(exist_ok=True)
        plot(results, DOCS / "costmodel_prediction.png")
        prof, cm = merged_profiles(results)
        plot_fit(prof, cm, DOCS / "costmodel_fit.png")
        log.info("wrote %s and %s", DOCS / "costmodel_prediction.png", DOCS / "costmodel_fit.png")
    out = {
        "benchmark": "costmodel", "quick": args.quick, "versions_per_model": versions,
        "threads": args.threads, "device": results[0]["profile"]["device"],
        "mape": mape(y, p), "r2": r2(y, p), "proxy_mape": mape(y, q),
        "mape_vs_proxy": mape(y, p) / mape(y, q), "target_mape": TARGET_MAPE,
        "meets_target": mape(y, p) <= TARGET_MAPE, "per_model": per_model,
        "seconds": time.perf_counter() - start,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
