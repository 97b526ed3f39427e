"""Inside one rank of a multi-process job: the process group, and rank 0's state sent to all.

Rank 0 is the only rank that reads a checkpoint; what it restored reaches the others by
broadcast: the loop state as JSON bytes, the model's parameters and buffers, the Sparsifier's
masks (`Sparsifier.broadcast`) and the optimiser's state (its structure as JSON, then each
tensor). Nothing is pickled.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job's process group."""

    rank: int
    world: int
    local_rank: int

    @property
    def leader(self) -> bool:
        return self.rank == 0


SINGLE = Ranks(0, 1, 0)


def init_ranks(device_kind: str, timeout_s: float) -> Ranks:
    """Join the group the elastic launcher set up (RANK, WORLD_SIZE, MASTER_ADDR/PORT in the
    environment): NCCL with one GPU per rank on CUDA, gloo on CPU."""
    ranks = Ranks(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                  int(os.environ.get("LOCAL_RANK", "0")))
    backend = "nccl" if device_kind == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(ranks.local_rank)
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return ranks


def device_of(ranks: Ranks, kind: str) -> torch.device:
    return torch.device("cuda", ranks.local_rank) if kind == "cuda" else torch.device("cpu")


def broadcast_json(obj: Any, ranks: Ranks, device: torch.device) -> Any:
    """Rank 0's JSON-able `obj` on every rank (others pass anything, e.g. None)."""
    data = json.dumps(obj).encode() if ranks.leader else b""
    size = torch.tensor([len(data)], dtype=torch.int64, device=device)
    dist.broadcast(size, 0)
    buf = (torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device) if ranks.leader
           else torch.empty(int(size), dtype=torch.uint8, device=device))
    dist.broadcast(buf, 0)
    return json.loads(bytes(buf.cpu().tolist())) if not ranks.leader else obj


def broadcast_module(model: nn.Module) -> None:
    """Rank 0's parameters and buffers, in place, on every rank."""
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            dist.broadcast(t.data, 0)


def broadcast_optimizer(opt: torch.optim.Optimizer, ranks: Ranks, device: torch.device) -> None:
    """Rank 0's optimiser state on every rank: its layout as JSON, then its tensors."""
    layout: dict[str, Any] = {}
    sd = opt.state_dict() if ranks.leader else None
    if sd is not None:
        layout = {"groups": sd["param_groups"], "state": {
            str(k): {name: _describe(v) for name, v in st.items()}
            for k, st in sd["state"].items()}}
    layout = broadcast_json(layout, ranks, device)
    state: dict[int, dict[str, Any]] = {}
    for key, entries in layout["state"].items():
        st: dict[str, Any] = {}
        for name, desc in entries.items():
            if desc["kind"] == "tensor":
                t = (sd["state"][int(key)][name] if sd is not None
                     else torch.empty(desc["shape"], dtype=getattr(torch, desc["dtype"])))
                on = t.to(device) if t.device != device else t
                dist.broadcast(on, 0)
                st[name] = on.to(t.device) if on is not t else t
            else:
                st[name] = desc["value"]
        state[int(key)] = st
    if not ranks.leader:
        opt.load_state_dict({"state": state, "param_groups": layout["groups"]})


def _describe(v: Any) -> dict[str, Any]:
    if isinstance(v, Tensor):
        return {"kind": "tensor", "shape": list(v.shape), "dtype": str(v.dtype).split(".")[-1]}
    return {"kind": "value", "value": v}


def reduce_sums(values: list[float], device: torch.device) -> list[float]:
    """Sums over all ranks of a few numbers (one all-reduce)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return [float(x) for x in t.tolist()]


def digest(model: nn.Module, sparsifier: Any | None) -> bytes:
    """SHA-256 of the hard masks and every parameter. Not the buffers: a BatchNorm's running
    statistics follow each rank's own shard between DDP's broadcasts of rank 0's."""
    h = hashlib.sha256()
    if sparsifier is not None:
        for name, mask in sorted(sparsifier.masks(expand=False).items()):
            h.update(name.encode())
            h.update(mask.to(torch.uint8).cpu().numpy().tobytes())
    with torch.no_grad():
        for name, t in model.named_parameters():
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.digest()


def compare_ranks(model: nn.Module, sparsifier: Any | None, ranks: Ranks, device: torch.device,
                  step: int) -> None:
    """Gather every rank's digest (masks and weights); ValueError if any differs."""
    mine = torch.frombuffer(bytearray(digest(model, sparsifier)), dtype=torch.uint8).to(device)
    every = [torch.empty_like(mine) for _ in range(ranks.world)]
    dist.all_gather(every, mine)
    differ = [r for r, d in enumerate(every) if not torch.equal(d, every[0])]
    if differ:
        raise ValueError(f"at step {step} the masks or weights of rank(s) {differ} differ from "
                         "rank 0's: the ranks no longer train the same model")
