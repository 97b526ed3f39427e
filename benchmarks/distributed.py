"""Data-parallel training with the Sparsifier: steps per second at 1, 2, ... processes.

    python -m benchmarks.distributed [--quick] [--processes 1,2] [--threads 1]

Each world size is a fresh group of ranks (torch.multiprocessing spawn, gloo on CPU; NCCL with
one GPU per rank when CUDA is available and --device cuda). Every rank trains an MLP
(784-1024-384-10, 1.2M weights, method spartan, budget 0.1, past warmup: the soft mask and both
threshold searches run every step) on random data, with the global batch split across ranks.
A step is forward, backward (DDP's gradient all-reduce), optimiser step and `Sparsifier.step()`
(the mask update and the broadcast of rank 0's decision, spartan.distributed). Reported per
world size: global steps per second (median step time of rank 0), examples per second, and the
Sparsifier's share of the step (median of its time / median step time). With several ranks a
barrier precedes `Sparsifier.step()`, so its time is the mask update and the exchange of rank
0's decision, not a wait for a slower rank (the barrier's wait stays in the step time).
Progress on stderr; one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from spartan import Sparsifier, SparsifierConfig

log = logging.getLogger("benchmarks.distributed")


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 384), nn.ReLU(),
                         nn.Linear(384, 10))


def rank_main(rank: int, world: int, init: str, out: str, steps: int, batch: int,
              threads: int, device_kind: str) -> None:
    torch.set_num_threads(threads)
    backend = "nccl" if device_kind == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"file://{init}", rank=rank, world_size=world)
    device = torch.device("cuda", rank) if device_kind == "cuda" else torch.device("cpu")
    if device_kind == "cuda":
        torch.cuda.set_device(device)
    torch.manual_seed(0)
    model = mlp().to(device)
    total = 10 * steps
    # warmup over the first 10%: the measured steps all update the masks (soft + hard)
    sp = Sparsifier(model, SparsifierConfig(method="spartan", budget=0.1, warmup_frac=0.1,
                                            finetune_frac=0.0), total_steps=total)
    ddp = DDP(model, device_ids=[rank] if device_kind == "cuda" else None)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.01, momentum=0.9)
    local = batch // world
    gen = torch.Generator().manual_seed(rank)
    x = torch.randn(local, 784, generator=gen).to(device)
    y = torch.randint(0, 10, (local,), generator=gen).to(device)

    def sync() -> None:
        if device_kind == "cuda":
            torch.cuda.synchronize()

    step_times, sp_times = [], []
    for i in range(total // 10 + steps):  # past warmup, then the measured steps
        sync()
        t0 = time.perf_counter()
        loss = nn.functional.cross_entropy(ddp(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sync()
        if world > 1:  # ranks that drifted apart wait here, not inside the Sparsifier's timing
            dist.barrier()
        t1 = time.perf_counter()
        sp.step()
        sync()
        t2 = time.perf_counter()
        if i >= total // 10:
            step_times.append(t2 - t0)
            sp_times.append(t2 - t1)
    dist.destroy_process_group()
    if rank == 0:
        Path(out).write_text(json.dumps({"step": statistics.median(step_times),
                                         "sparsifier": statistics.median(sp_times),
                                         "adopted": sp.adopted}))


def measure(world: int, steps: int, batch: int, threads: int, device_kind: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.json")
        mp.spawn(rank_main, nprocs=world, join=True,
                 args=(world, os.path.join(tmp, "rdzv"), out, steps, batch, threads,
                       device_kind))
        res = json.loads(Path(out).read_text())
    return {"processes": world, "steps_per_s": round(1.0 / res["step"], 2),
            "examples_per_s": round(batch / res["step"], 1),
            "step_ms": round(1e3 * res["step"], 2),
            "sparsifier_ms": round(1e3 * res["sparsifier"], 2),
            "sparsifier_share": round(res["sparsifier"] / res["step"], 3)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps")
    ap.add_argument("--processes", default=None, help="world sizes, e.g. 1,2 (default: 1,2 "
                    "on CPU, 1 to all GPUs on CUDA)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    ap.add_argument("--batch", type=int, default=256, help="global batch")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda needs a CUDA device")
    if args.processes:
        worlds = [int(p) for p in args.processes.split(",")]
    elif args.device == "cuda":
        worlds = list(range(1, torch.cuda.device_count() + 1))
    else:
        worlds = [1, 2]
    steps = 20 if args.quick else 100
    rows = []
    for world in worlds:
        row = measure(world, steps, args.batch, args.threads, args.device)
        log.info("%s", row)
        rows.append(row)
    print(json.dumps({"benchmark": "distributed", "device": args.device,
                      "backend": "nccl" if args.device == "cuda" else "gloo",
                      "model": "mlp 784-1024-384-10", "global_batch": args.batch,
                      "threads_per_rank": args.threads, "steps": steps,
                      "cpus": os.cpu_count(), "torch": torch.__version__, "results": rows}))


if __name__ == "__main__":
    main()
