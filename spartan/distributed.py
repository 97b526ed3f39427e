"""Masks under torch.distributed: every rank computes its step's masks, rank 0's decision wins.

Under DistributedDataParallel every rank holds the same weights after each optimiser step (the
gradients are all-reduced, and an all-reduce hands every rank the same bytes), so each rank can
compute the masks itself. What it computes is a function of the weights only up to the order of
floating-point sums: the fused CPU passes (spartan/_native.c) combine their threads' partial
sums in the order the threads finish, and torch's reductions split work by thread count and
instruction set. The sums decide tau, beta and, with weighted costs, the knapsack's cut, so two
ranks can disagree in the last bits, and a soft mask in the last bits of every weight.

So after each step (and on `Sparsifier.broadcast`) the decision of rank 0 of the process group
goes to every rank: per budget group, the mode, tau, beta and the fused path's thresholds (a
few float64 numbers), plus the hard mask itself where it is not a function of those thresholds
and the weights (the torch path; one byte per item). A rank whose own decision differs takes
rank 0's and rebuilds its forward weights from it, with the same kernels, so the forward masks
match bit for bit. Frozen masks (the finetune phase) are never re-decided and cost nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from spartan import _fast

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

    from spartan.masking import Group

_MODES = ("dense", "soft", "ste", "hard")
_FAST = _fast.SAVED
# Per group: mode, tau, beta, fast state present, its fields, forward buffers made by the
# fused path, h sent, tau is a tensor (N:M).
_WIDTH = 3 + 1 + len(_FAST) + 3


def available_group(group: ProcessGroup | None = None) -> ProcessGroup | None:
    """The process group masks are kept identical over: `group`, else the default one when
    torch.distributed is initialised with more than one rank, else None (nothing to do)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        if group is not None:
            raise ValueError("a process_group was given but torch.distributed is not initialised")
        return None
    pg = group if group is not None else dist.group.WORLD
    return pg if dist.get_world_size(pg) > 1 else None


def refuse_sharded(model: nn.Module) -> None:
    """ValueError for models whose parameters are sharded (FSDP, fully_shard, DTensor): a mask
    there would see one shard (or a flattened view) of a weight and decide a different top-k
    per rank."""
    fsdp = _fsdp_classes()
    for name, module in model.named_modules():
        if isinstance(module, fsdp):
            raise ValueError(
                f"module {name or '<root>'!r} is wrapped in FSDP ({type(module).__name__}): its "
                "weights are sharded across ranks, so masks cannot be computed on whole "
                "weights. Attach the Sparsifier to the plain model and wrap it in "
                "DistributedDataParallel instead (see docs/distributed.md)")
    for name, p in model.named_parameters():
        kind = type(p).__name__
        if kind in ("FlatParameter", "DTensor"):
            raise ValueError(
                f"parameter {name!r} is a {kind} (FSDP or tensor parallelism shards it across "
                "ranks): masks need whole weights; use DistributedDataParallel "
                "(see docs/distributed.md)")


def _fsdp_classes() -> tuple[type, ...]:
    try:
        import torch.distributed.fsdp as fsdp
    except ImportError:  # torch built without distributed
        return ()
    names = ("FullyShardedDataParallel", "FSDPModule")  # FSDP1, and fully_shard (torch 2.6+)
    return tuple(c for c in (getattr(fsdp, n, None) for n in names) if isinstance(c, type))


@dataclass
class Decision:
    """What one rank decided for every budget group: scalars, and the tensors that go along."""

    header: Tensor  # float64 [step, frozen]
    scalars: Tensor  # float64 (groups, _WIDTH)
    masks: list[Tensor | None]  # per group: h as uint8, when sent
    taus: list[Tensor | None]  # per group: the N:M tau tensor, when soft under N:M


def decide(step: int, frozen: bool, groups: list[Group], device: torch.device) -> Decision:
    """This rank's decision, as it would be sent."""
    rows, masks, taus = [], [], []
    for g in groups:
        row = [math.nan] * _WIDTH
        row[0] = float(_MODES.index(g.mode))
        if g.mode != "dense":
            row[1] = g.tau if isinstance(g.tau, float) else math.nan
            row[2] = float(g.beta)
            saved = _fast.state(g)
            row[3] = float(saved is not None)
            if saved is not None:
                row[4:4 + len(_FAST)] = [float(saved[k]) for k in _FAST]
            # A stale h is x > t (and ties below lim) of the fused path: the thresholds and
            # the weights decide it, so it need not travel.
            send_h = not (saved is not None and g.stale)
            row[-3] = float(g.fast_mode)
            row[-2] = float(send_h)
            row[-1] = float(isinstance(g.tau, Tensor))
        rows.append(row)
        send = g.mode != "dense" and row[-2] == 1.0
        masks.append(g.h.view(torch.uint8).to(device) if send else None)
        taus.append(g.tau.to(device, torch.float64) if isinstance(g.tau, Tensor) else None)
    header = torch.tensor([float(step), float(frozen)], dtype=torch.float64, device=device)
    scalars = torch.tensor(rows, dtype=torch.float64, device=device).reshape(-1, _WIDTH)
    return Decision(header, scalars, masks, taus)


def exchange(mine: Decision, groups: list[Group], pg: ProcessGroup, src: int) -> Decision:
    """Broadcast src's decision (src: a rank of pg) over pg; every rank returns src's."""
    import torch.distributed as dist

    root = dist.get_global_rank(pg, src)
    is_src = dist.get_rank(pg) == src
    head = torch.cat([mine.header, mine.scalars.reshape(-1)])
    dist.broadcast(head, root, group=pg)
    header, scalars = head[:2], head[2:].view(-1, _WIDTH)
    sizes = [g.n if row[0] != 0 and row[-2] == 1.0 else 0 for g, row in
             zip(groups, scalars.tolist(), strict=True)]
    nm_sizes = [g.n // g.nm if row[0] != 0 and row[-1] == 1.0 else 0 for g, row in
                zip(groups, scalars.tolist(), strict=True)]
    device = head.device
    masks = _flat(mine.masks, sizes, torch.uint8, device, is_src)
    taus = _flat(mine.taus, nm_sizes, torch.float64, device, is_src)
    if masks.numel():
        dist.broadcast(masks, root, group=pg)
    if taus.numel():
        dist.broadcast(taus, root, group=pg)
    return Decision(header, scalars, _split(masks, sizes), _split(taus, nm_sizes))


def _flat(parts: list[Tensor | None], sizes: list[int], dtype: torch.dtype,
          device: torch.device, is_src: bool) -> Tensor:
    if is_src:
        return torch.cat([p.reshape(-1) for p in parts if p is not None]
                         or [torch.empty(0, dtype=dtype, device=device)])
    return torch.empty(sum(sizes), dtype=dtype, device=device)


def _split(flat: Tensor, sizes: list[int]) -> list[Tensor | None]:
    out: list[Tensor | None] = []
    for part in torch.split(flat, sizes):
        out.append(part if part.numel() else None)
    return out


def differs(a: Decision, b: Decision, i: int) -> bool:
    """Whether group i's decisions differ, bit for bit (NaN equal to NaN)."""
    if not torch.equal(a.scalars[i].view(torch.int64), b.scalars[i].view(torch.int64)):
        return True
    for x, y in ((a.masks[i], b.masks[i]), (a.taus[i], b.taus[i])):
        if x is None or y is None:
            if (x is None) != (y is None):
                return True
        elif not torch.equal(x, y):
            return True
    return False


def group_state(row: list[float], mask: Tensor | None, tau: Tensor | None) -> dict[str, Any]:
    """One group's decision in the form of Sparsifier.state_dict()["groups"] entries."""
    mode = _MODES[int(row[0])]
    fast = ({k: (int(row[4 + i]) if k == "lim" else row[4 + i]) for i, k in enumerate(_FAST)}
            if row[3] == 1.0 else None)
    return {"mode": mode, "tau": tau if tau is not None else (None if math.isnan(row[1])
                                                              else row[1]),
            "beta": row[2] if mode != "dense" else 0.0,
            "h": None if mask is None else mask.view(torch.bool), "fast": fast,
            "fused": row[-3] == 1.0}
