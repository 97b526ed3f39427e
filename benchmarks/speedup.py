"""Dense vs exported sparse latency: `python -m benchmarks.speedup [--quick]`.

Models: MLP 1024-4096-4096-1000, a small CNN (3x32x32, channels 64-128-256) and a small ViT
(3x32x32, patch 4, dim 256, depth 4). Each is magnitude-pruned (Sparsifier "imp", uniform, one
step) to 90% and 95% sparsity, unstructured and in 16x16 blocks, then exported with
`spartan.to_sparse(kernel="auto")` (kernels chosen by timing at that batch size). Latency is the
median of repeated runs of the whole model, dense-with-zeros vs exported, at batch 1 and 64, on
CPU, and on CUDA when present (there also 2:4 in half precision). Baseline: the same model's
dense run, measured in the same process. Progress on stderr, one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any

import torch
from torch import nn

from benchmarks._measure import median_time
from spartan import Sparsifier, SparsifierConfig, to_sparse
from spartan_service.zoo import build_model

log = logging.getLogger("benchmarks.speedup")

MODELS: dict[str, tuple[str, dict[str, Any], tuple[int, ...], int]] = {
    "mlp": ("mlp", {"hidden": [4096, 4096]}, (1024,), 1000),
    "cnn": ("cnn", {"channels": [64, 128, 256], "kernel": 3}, (3, 32, 32), 10),
    "vit": ("vit", {"dim": 256, "depth": 4, "heads": 8, "mlp_ratio": 4, "patch": 4},
            (3, 32, 32), 10),
}
SETTINGS = [("unstructured", 0.90, (1, 1)), ("unstructured", 0.95, (1, 1)),
            ("block16", 0.90, (16, 16)), ("block16", 0.95, (16, 16))]
TARGET = 3.0  # MLP, 95% unstructured, batch 64, CPU


def pruned(name: str, sparsity: float, block: tuple[int, int], allocation: str = "uniform",
           device: str = "cpu") -> nn.Module:
    arch, kwargs, shape, classes = MODELS[name]
    torch.manual_seed(0)
    model = build_model(arch, kwargs, shape, classes).to(device)
    cfg = SparsifierConfig(method="imp", budget=1 - sparsity, block=block,
                           allocation=allocation, warmup_frac=0.0, finetune_frac=0.0)
    Sparsifier(model, cfg, total_steps=1).finalize()
    return model.eval()


def measure(model: nn.Module, shape: tuple[int, ...], batch: int, repeats: int, device: str,
            dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    x = torch.randn(batch, *shape, device=device, dtype=dtype)
    t0 = time.perf_counter()
    sparse = to_sparse(model, "auto", device=device, example=x)
    export_s = time.perf_counter() - t0
    with torch.no_grad():
        dense_s = median_time(lambda: model(x), repeats, 2, device)
        sparse_s = median_time(lambda: sparse(x), repeats, 2, device)
        err = float((sparse(x).float() - model(x).float()).abs().max())
    kinds: dict[str, int] = {}
    for k in sparse.kernels.values():
        kinds[k] = kinds.get(k, 0) + 1
    return {"batch": batch, "dense_ms": dense_s * 1e3, "sparse_ms": sparse_s * 1e3,
            "speedup": dense_s / sparse_s, "kernels": kinds, "export_s": export_s,
            "max_abs_err": err}


def run(models: list[str], settings: list[tuple[str, float, tuple[int, int]]],
        batches: list[int], repeats: int) -> list[dict[str, Any]]:
    rows = []
    for name in models:
        for kind, sparsity, block in settings:
            model = pruned(name, sparsity, block)
            for batch in batches:
                r = measure(model, MODELS[name][2], batch, repeats, "cpu")
                rows.append({"model": name, "device": "cpu", "pattern": kind,
                             "sparsity": sparsity, **r})
                log.info("%s %s %.0f%% batch %d: dense %.2f ms, sparse %.2f ms, %.2fx %s",
                         name, kind, sparsity * 100, batch, r["dense_ms"], r["sparse_ms"],
                         r["speedup"], r["kernels"])
    if torch.cuda.is_available():  # untested here (no GPU on the CI machine)
        for name in models:
            model = pruned(name, 0.5, (1, 1), "2:4", "cuda").half()
            for batch in batches:
                r = measure(model, MODELS[name][2], batch, repeats, "cuda", torch.float16)
                rows.append({"model": name, "device": "cuda", "pattern": "2:4",
                             "sparsity": 0.5, **r})
                log.info("%s 2:4 cuda batch %d: %.2fx %s", name, batch, r["speedup"],
                         r["kernels"])
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="MLP at 95%% unstructured only, fewer repeats")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared 2-core machine a second thread "
                         "waits for a time slice and both kernels' timings turn to noise)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    if args.quick:
        rows = run(["mlp"], [SETTINGS[1]], [1, 64], 5)
    else:
        rows = run(list(MODELS), SETTINGS, [1, 64], 15)
    target = next(r for r in rows if r["model"] == "mlp" and r["device"] == "cpu"
                  and r["pattern"] == "unstructured" and r["sparsity"] == 0.95
                  and r["batch"] == 64)
    print(json.dumps({"benchmark": "speedup", "threads": torch.get_num_threads(),
                      "target": {"speedup": target["speedup"], "goal": TARGET,
                                 "met": target["speedup"] >= TARGET},
                      "rows": rows}))


if __name__ == "__main__":
    main()
