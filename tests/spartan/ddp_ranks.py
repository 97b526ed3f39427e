"""What each rank of the DDP tests runs (spawned by torch.multiprocessing; importable by path).

Every case trains a digits MLP under DistributedDataParallel with a Sparsifier attached before
wrapping, and after every step gathers from all ranks the hard masks, the forward weights (the
masked weights the next forward uses) and the dense weights, compares them bit for bit, and
writes what it found to OUT/rank{R}.json.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from sklearn.datasets import load_digits
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP

from spartan import Sparsifier, SparsifierConfig

STEPS, GLOBAL_BATCH = 12, 64
# warmup over half the steps, masks frozen over the last quarter: all phases in 12 steps
PHASES = {"warmup_frac": 0.5, "finetune_frac": 0.25}


def digits() -> tuple[Tensor, Tensor]:
    x, y = load_digits(return_X_y=True)
    return torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)


def mlp(seed: int) -> nn.Module:
    # 64-256-256-10: one global budget group of ~84K weights, over the fused path's threading
    # threshold (64K), so a rank's thread count changes the order of its sums.
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                         nn.Linear(256, 10))


def forward_weights(model: nn.Module, sp: Sparsifier) -> dict[str, Tensor]:
    """The weights the forward pass uses (w * mask), read through the parametrizations."""
    out = {}
    with torch.no_grad():
        for name in sp.weights:
            path, attr = name.rsplit(".", 1)
            out[name] = getattr(model.get_submodule(path), attr).detach().clone()
    return out


def fingerprint(model: nn.Module, sp: Sparsifier) -> Tensor:
    """Masks, forward weights and dense weights as one byte string."""
    parts = [m.reshape(-1).to(torch.uint8) for m in sp.masks().values()]
    parts += [w.reshape(-1).view(torch.uint8) for w in forward_weights(model, sp).values()]
    parts += [p.detach().reshape(-1).view(torch.uint8) for p in sp.weights.values()]
    return torch.cat(parts)


def identical_everywhere(t: Tensor) -> bool:
    gathered = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, t)
    return all(torch.equal(gathered[0], g) for g in gathered[1:])


def train_case(case: dict[str, Any], rank: int, world: int,
               resume_at: int | None = None) -> dict[str, Any]:
    """One run; with resume_at, rank 0 alone keeps the state at that step, every rank
    rebuilds from scratch, and rank 0's state is broadcast (DDP for the weights, the
    Sparsifier's `broadcast` for the masks, the optimizer's state by hand)."""
    x, y = digits()
    model = mlp(seed=rank)  # different on each rank: DDP's broadcast at wrapping must fix it
    config = SparsifierConfig(**{**PHASES, **case})
    sp = Sparsifier(model, config, total_steps=STEPS, example_inputs=x[:4])
    ddp = DDP(model)
    opt = torch.optim.AdamW(ddp.parameters(), lr=1e-2)
    local = GLOBAL_BATCH // world
    bad_steps, saved = [], None
    step = 0
    while step < STEPS:
        lo = step * GLOBAL_BATCH + rank * local
        loss = nn.functional.cross_entropy(ddp(x[lo:lo + local]), y[lo:lo + local])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sp.step()
        step += 1
        if not identical_everywhere(fingerprint(model, sp)):
            bad_steps.append(step)
        if step == resume_at and saved is None:
            saved = (model.state_dict(), opt.state_dict(), sp.state_dict()) if rank == 0 else 0
            model = mlp(seed=100 + rank)
            sp = Sparsifier(model, config, total_steps=STEPS, example_inputs=x[:4])
            if rank == 0:
                model.load_state_dict(saved[0])  # type: ignore[index]
                sp.load_state_dict(saved[2])  # type: ignore[index]
            ddp = DDP(model)
            sp.broadcast()
            opt = torch.optim.AdamW(ddp.parameters(), lr=1e-2)
            if rank == 0:
                opt.load_state_dict(saved[1])  # type: ignore[index]
            broadcast_adam(opt)
            if not identical_everywhere(fingerprint(model, sp)):
                bad_steps.append(-step)
    return {"bad_steps": bad_steps, "adopted": sp.adopted, "step": sp.step_count,
            "density": sp.report().density,
            "fingerprint": hashlib.sha256(fingerprint(model, sp).numpy().tobytes()).hexdigest()}


def broadcast_adam(opt: torch.optim.Optimizer) -> None:
    """Rank 0's AdamW moments on every rank (the test's own, minimal version)."""
    for group in opt.param_groups:
        for p in group["params"]:
            st = opt.state[p]
            if not st:
                st["step"] = torch.zeros(())
                st["exp_avg"], st["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
            for key in ("step", "exp_avg", "exp_avg_sq"):
                dist.broadcast(st[key], 0)


def fsdp_checks() -> dict[str, str]:
    """FSDP2 (fully_shard) around a model, before and after attaching: both refused."""
    from torch.distributed.fsdp import fully_shard

    found = {}
    model = mlp(seed=0)
    fully_shard(model)
    try:
        Sparsifier(model, SparsifierConfig(), total_steps=STEPS)
        found["sharded_then_attached"] = "accepted"
    except ValueError as exc:
        found["sharded_then_attached"] = str(exc)
    model = mlp(seed=0)
    sp = Sparsifier(model, SparsifierConfig(warmup_frac=0.0), total_steps=STEPS)
    fully_shard(model)
    try:
        model(digits()[0][:4])
        sp.step()
        found["attached_then_sharded"] = "accepted"
    except ValueError as exc:
        found["attached_then_sharded"] = str(exc)
    return found


def main(rank: int, world: int, init_file: str, out: str, cases: list[dict[str, Any]],
         threads: list[int], resume_at: int | None, fsdp: bool = False) -> None:
    torch.set_num_threads(threads[rank])
    os.environ.setdefault("OMP_NUM_THREADS", str(threads[rank]))
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        results: list[Any] = [train_case(c, rank, world, resume_at) for c in cases]
        if fsdp:
            results.append(fsdp_checks())
    finally:
        dist.destroy_process_group()
    Path(out, f"rank{rank}.json").write_text(json.dumps(results))
