"""Training-step overhead of the Sparsifier: sparse step time / dense step time, same run.

    python -m benchmarks.train_overhead [--quick] [--threads N]

A step is zero_grad, forward, backward, SGD (momentum 0.9) step, and for the sparse run
`Sparsifier.step()` (method spartan, mask update every step, budget 0.1, past warmup so the
soft mask and both threshold searches run each step). Dense and sparse steps alternate so
machine noise hits both; on CPU a third step joins them, the sparse step on the torch path
(without the fused passes of spartan/_native.c: torch_path_ratio). The figure is the ratio of
median wall times (cpu_time_ratio: the same with process CPU time, steadier on a shared machine
when run with --threads 1). CPU: an MLP and a ResNet-style CNN of about 1.2M weights at batch 64.
CUDA when available: a bottleneck ResNet-50 (25.5M weights, 224x224) at batch 128. Also
cpu_mask_update: `Sparsifier.step()` alone for that ResNet-50 on CPU, fused against torch path.
Progress on stderr; one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

from spartan import Sparsifier, SparsifierConfig, _native

log = logging.getLogger("benchmarks.train_overhead")


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 384),
                         nn.ReLU(), nn.Linear(384, 10))


class Basic(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                       nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.short(x))


class Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = 4 * width
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                       nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.short(x))


def resnet_small() -> nn.Module:
    """CIFAR-style ResNet (3x32x32 input), widths 32-64-128-256, one block per stage: 1.2M."""
    layers: list[nn.Module] = [nn.Conv2d(3, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32),
                               nn.ReLU()]
    cin = 32
    for width, stride in ((32, 1), (64, 2), (128, 2), (256, 2)):
        layers.append(Basic(cin, width, stride))
        cin = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 10)]
    return nn.Sequential(*layers)


def resnet50() -> nn.Module:
    """ResNet-50 (He et al. 2016) with bottleneck blocks 3-4-6-3, 1000 classes."""
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                               nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(blocks):
            layers.append(Bottleneck(cin, width, stride if i == 0 else 1))
            cin = 4 * width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 1000)]
    return nn.Sequential(*layers)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _step_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, sparse: bool,
             amp: bool, block: tuple[int, int] = (1, 1)) -> Callable[[], None]:
    sp = None
    if sparse:
        # No warmup and no finetune: every timed step runs the full soft-mask update.
        cfg = SparsifierConfig(budget=0.1, block=block, warmup_frac=0.0, finetune_frac=0.0)
        sp = Sparsifier(model, cfg, total_steps=10**9)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if sp is not None:
            sp.step()

    return step


def _fused(on: bool) -> None:
    """Turn the Sparsifier's fused CPU passes on or off (process-wide)."""
    if (os.environ.get("SPARTAN_NATIVE", "1") != "0") != on:
        os.environ["SPARTAN_NATIVE"] = "1" if on else "0"
        _native.reset()


def measure(name: str, build: Callable[[], nn.Module], shape: tuple[int, ...], classes: int,
            device: torch.device, steps: int, amp: bool = False,
            block: tuple[int, int] = (1, 1)) -> dict:
    """Median dense and sparse step times, one dense and one sparse step alternating."""
    torch.manual_seed(0)
    x = torch.randn(*shape, device=device)
    y = torch.randint(0, classes, (shape[0],), device=device)
    dense_model = build().to(device)
    sparse_model = build().to(device)
    sparse_model.load_state_dict(dense_model.state_dict())
    runs = {"dense": _step_fn(dense_model, x, y, False, amp),
            "sparse": _step_fn(sparse_model, x, y, True, amp, block)}
    if device.type == "cpu":  # the same sparse step without the fused CPU passes
        torch_model = build().to(device)
        torch_model.load_state_dict(dense_model.state_dict())
        _fused(False)
        runs["sparse_torch_path"] = _step_fn(torch_model, x, y, True, amp, block)
    wall: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    for kind, fn in runs.items():  # warm up allocator, kernels and the solver's warm start
        _fused(kind != "sparse_torch_path")
        for _ in range(3):
            fn()
    _sync(device)
    for i in range(steps):
        for kind, fn in runs.items():
            _fused(kind != "sparse_torch_path")  # outside the timed region
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            _sync(device)
            wall[kind].append(time.perf_counter() - t0)
            cpu[kind].append(time.process_time() - c0)
        if (i + 1) % max(1, steps // 4) == 0:
            log.info("%s %d/%d medians so far: %s", name, i + 1, steps, ", ".join(
                f"{k} {1e3 * statistics.median(v):.2f} ms" for k, v in wall.items()))
    weights = sum(m.weight.numel() for m in dense_model.modules()
                  if isinstance(m, (nn.Linear, nn.Conv2d)))
    med = {k: {kind: statistics.median(v) for kind, v in d.items()}
           for k, d in (("wall", wall), ("cpu", cpu))}
    out = {"model": name, "device": device.type, "masked_weights": weights, "batch": shape[0],
           "block": list(block),
           "amp_bf16": amp, "dense_ms": round(1e3 * med["wall"]["dense"], 3),
           "sparse_ms": round(1e3 * med["wall"]["sparse"], 3),
           "ratio": round(med["wall"]["sparse"] / med["wall"]["dense"], 4),
           "cpu_time_ratio": round(med["cpu"]["sparse"] / med["cpu"]["dense"], 4),
           "steps_timed": steps}
    if "sparse_torch_path" in runs:
        _fused(True)
        out["fused"] = _native.library() is not None  # False: no compiler, both paths the same
        out["torch_path_ms"] = round(1e3 * med["wall"]["sparse_torch_path"], 3)
        out["torch_path_ratio"] = round(med["wall"]["sparse_torch_path"] / med["wall"]["dense"], 4)
    return out


def mask_update(build: Callable[[], nn.Module], steps: int) -> dict:
    """Median `Sparsifier.step()` alone on CPU, fused passes against the torch path, alternating;
    the weights move by small random steps between updates, as under an optimiser."""
    gen = torch.Generator().manual_seed(0)
    sps = {}
    for fused in (True, False):
        _fused(fused)
        torch.manual_seed(0)
        cfg = SparsifierConfig(budget=0.1, warmup_frac=0.0, finetune_frac=0.0)
        sps[fused] = Sparsifier(build(), cfg, total_steps=10**9)
    times: dict[bool, list[float]] = {True: [], False: []}
    for i in range(steps + 3):
        for fused, sp in sps.items():
            _fused(fused)
            with torch.no_grad():
                for w in sp.weights.values():
                    w.add_(torch.randn(w.shape, generator=gen), alpha=1e-4)
            t0 = time.perf_counter()
            sp.step()
            if i >= 3:  # the first steps seed the fused state and size its bracket
                times[fused].append(time.perf_counter() - t0)
    _fused(True)
    fused_ms, torch_ms = (1e3 * statistics.median(times[k]) for k in (True, False))
    weights = sum(w.numel() for w in sps[True].weights.values())
    log.info("mask update: fused %.1f ms, torch path %.1f ms", fused_ms, torch_ms)
    return {"model": "resnet50", "masked_weights": weights, "fused_ms": round(fused_ms, 2),
            "torch_path_ms": round(torch_ms, 2), "speedup": round(torch_ms / fused_ms, 2),
            "fused": _native.library() is not None, "steps_timed": steps}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer timed steps (a smoke run)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    results = [
        measure("mlp", mlp, (64, 784), 10, cpu, steps=10 if args.quick else 300),
        # Beyond the target's batch 64: the mask's cost is per step, the dense work per example.
        measure("mlp", mlp, (256, 784), 10, cpu, steps=5 if args.quick else 150),
        measure("mlp", mlp, (64, 784), 10, cpu, steps=5 if args.quick else 150, block=(16, 16)),
        measure("resnet_small", resnet_small, (64, 3, 32, 32), 10, cpu,
                steps=3 if args.quick else 40),
    ]
    targets = {"cpu": 1.10, "cuda": 1.05}
    note = None
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        for amp in (False, True):
            results.append(measure("resnet50", resnet50, (128, 3, 224, 224), 1000, gpu,
                                   steps=5 if args.quick else 40, amp=amp))
    else:
        note = "no CUDA device: ResNet-50 at batch 128 not measured"
    for r in results:
        r["target"] = targets[r["device"]]
        r["meets_target"] = r["ratio"] <= r["target"]
    out = {"benchmark": "train_overhead", "threads": torch.get_num_threads(),
           "torch": torch.__version__, "quick": args.quick, "results": results,
           "cpu_mask_update": mask_update(resnet50, 3 if args.quick else 12)}
    if note:
        out["note"] = note
    print(json.dumps(out))


if __name__ == "__main__":
    main()
