"""Shared machinery of the top-k solvers: input checks and chunked passes.

On CPU a pass over n items runs chunk by chunk through small reused buffers, so nothing of the
input's size is allocated but a returned mask (fresh large buffers cost more in page faults than
the arithmetic); on other devices a chunk is the whole tensor.
"""

from __future__ import annotations

import math
import struct
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

CHUNK = 1 << 21  # CPU work unit: few parallel regions per pass, buffers mostly in L3
SEED = 20221128  # samples are drawn from a fixed seed: same input, same work
_checked: dict[tuple[int, torch.dtype], list[Any]] = {}  # costs checked: [ref, version, total, x]


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def chunk_len(n: int, device: torch.device) -> int:
    """Chunk length: at most CHUNK, and an eighth of n or less (so buffers stay small beside
    the input) unless that is below 65536 items."""
    return min(n, CHUNK, max(n // 8, 1 << 16)) if device.type == "cpu" else n


def spans(n: int, device: torch.device) -> Iterator[tuple[int, int]]:
    step = chunk_len(n, device)
    for a in range(0, n, step):
        yield a, min(a + step, n)


def buffer(n: int, dtype: torch.dtype, device: torch.device, rows: int = 1) -> Tensor:
    return torch.empty(rows, chunk_len(n, device), dtype=dtype, device=device)


def part(t: Tensor | None, a: int, b: int) -> Tensor | None:
    return None if t is None else t[a:b]


def gather(t: Tensor | None, idx: Tensor) -> Tensor | None:
    return None if t is None else t[idx]


def check_costs(values: Tensor, costs: Tensor | None) -> tuple[Tensor | None, float]:
    """Costs in the work dtype (None for unit costs) and their total; ValueError on bad input.
    Checks of a costs tensor are remembered until it changes (a Sparsifier passes the same one
    every step)."""
    if not isinstance(values, Tensor) or values.dim() != 1 or values.numel() == 0:
        raise ValueError("values must be a non-empty 1-D tensor")
    if not values.is_floating_point():
        raise ValueError(f"values must be floating point, got {values.dtype}")
    if costs is None:
        return None, float(values.numel())
    if not isinstance(costs, Tensor) or costs.shape != values.shape:
        raise ValueError(f"costs must be a tensor of shape {tuple(values.shape)}")
    if costs.device != values.device:
        raise ValueError(f"costs on {costs.device}, values on {values.device}")
    c, key = costs.detach().to(work_dtype(values.dtype)), (id(costs), work_dtype(values.dtype))
    seen = _checked.get(key)
    if seen is not None and seen[0]() is costs and seen[1] == costs._version:
        return c, seen[2]
    cmin, cmax = torch.stack(torch.aminmax(c)).tolist()
    if not (cmin > 0 and math.isfinite(cmax)):
        raise ValueError("costs must be finite and > 0")
    total = sum64(c)
    if len(_checked) > 16:
        _checked.clear()
    _checked[key] = [weakref.ref(costs), costs._version, total, None]
    return c, total


def costs_entry(costs: Tensor, dtype: torch.dtype) -> list[Any]:
    """What is remembered of a costs tensor that `check_costs` passed: [ref, version, total,
    slot for a sample of it]."""
    return _checked[(id(costs), dtype)]


def validate(values: Tensor, costs: Tensor | None, budget: float) -> tuple[Tensor | None, float]:
    """Checked costs and their total; ValueError unless 0 < budget < total."""
    c, total = check_costs(values, costs)
    if not 0.0 < float(budget) < total:
        raise ValueError(f"budget must be in (0, sum(costs)={total:g}), got {budget!r}")
    return c, total


def check_beta(beta: float) -> float:
    if not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be finite and > 0, got {beta!r}")
    return float(beta)


def sum64(x: Tensor, buf: Tensor | None = None) -> Any:
    """Sum in float64 (float32 sums drift by ~1e-7: too coarse for a knapsack over millions of
    items), as a 0-d tensor when buf (a float64 chunk) is given, else as a float."""
    if x.dtype == torch.float64 or x.device.type != "cpu":
        s = x.sum(dtype=torch.float64)
    else:
        b64 = buf if buf is not None else buffer(x.numel(), torch.float64, x.device)[0]
        s = torch.stack([b64[:b - a].copy_(x[a:b]).sum() for a, b in spans(x.numel(), x.device)])
        s = s.sum()
    return s if buf is not None else float(s)


def ratio_into(v: Tensor, div: Tensor | None, out: Tensor) -> Tensor:
    """v / div in out's dtype (v itself when that needs no arithmetic)."""
    if div is None:
        return v if v.dtype == out.dtype else out.copy_(v)
    return torch.div(v.to(out.dtype), div, out=out)


def ratio(v: Tensor, div: Tensor | None) -> Tensor:
    return ratio_into(v, div, torch.empty(v.numel(), dtype=work_dtype(v.dtype), device=v.device))


def check_finite(lo: float, hi: float) -> None:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError("values (and values / costs * beta) must be finite")


def generator(device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(SEED)


def sample(n: int, size: int, device: torch.device) -> Tensor:
    return torch.randint(n, (size,), generator=generator(device), device=device)


def split_scalar(u: float, dtype: torch.dtype) -> tuple[float, float]:
    """u as u1 + u2: u1 its nearest value in dtype (what an op uses), u2 the remainder."""
    if dtype == torch.float64:
        return u, 0.0
    try:
        u1: float = struct.unpack("f", struct.pack("f", u))[0]
    except OverflowError:
        return u, 0.0
    return u1, (u - u1 if abs(u - u1) > 1e-7 else 0.0)

