"""N:M allocation (e.g. 2:4): every run of M consecutive inputs of a weight row keeps N weights.

The soft mask is Spartan's soft top-k solved per group of M items with a budget of k items,
m_j = sigmoid(beta (v_j - tau_g)) with sum_{j in g} m_j = k, all groups at once (vectorised
safeguarded Newton on the per-group root); the hard mask keeps the ceil(k) largest of each group,
so at the end of the warmup (k = N) exactly N of M, the pattern of NVIDIA's 2:4 sparse tensor
cores (Mishra et al., "Accelerating Sparse Deep Neural Networks", 2021). Costs do not enter an
N:M mask: the pattern counts weights.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from spartan.masking import Group

_NM = re.compile(r"^(\d+):(\d+)$")
_MAX_ITER = 60


def parse_nm(allocation: str) -> tuple[int, int] | None:
    """(N, M) of an "N:M" allocation with 0 < N < M, None for other allocations."""
    match = _NM.match(allocation) if isinstance(allocation, str) else None
    if match is None:
        return None
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise ValueError(f"N:M allocation needs 0 < N < M, got {allocation!r}")
    return n, m


def nm_keep(fraction: float, m: int) -> int:
    """Items kept per group at a kept fraction (rounded up, so the schedule ends at N)."""
    return min(m, max(1, math.ceil(fraction * m - 1e-6)))


def nm_hard(values: Tensor, m: int, keep: int, previous: Tensor | None = None) -> Tensor:
    """Flat bool mask keeping the `keep` largest of each run of m values; with `previous`
    (IMP) only among the items it kept."""
    g = values.reshape(-1, m)
    if previous is not None:
        g = g.masked_fill(~previous.reshape(-1, m), float("-inf"))
    idx = g.topk(keep, dim=-1).indices
    return torch.zeros(g.shape, dtype=torch.bool, device=g.device).scatter_(-1, idx, True).view(-1)


def nm_threshold(values: Tensor, m: int, k: float, beta: float, tol: float = 1e-6) -> Tensor:
    """Per-group tau (shape (numel / m,)) with sum_j sigmoid(beta (v_j - tau)) = k in each group.

    Works on x = beta v in float64; start at the midpoint of the hard cut, Newton steps kept
    inside a bracket that shrinks each iteration, bisection when a step leaves it.
    """
    if not 0 < k < m:
        raise ValueError(f"per-group budget must be in (0, {m}), got {k!r}")
    x = values.detach().reshape(-1, m).to(torch.float64) * beta
    xs = x.sort(dim=-1, descending=True).values
    j = min(max(round(k), 1), m - 1)
    t = (xs[:, j - 1] + xs[:, j]) / 2
    slack = abs(math.log(k / (m - k))) + 1.0
    lo, hi = xs[:, -1] - slack, xs[:, 0] + slack
    for _ in range(_MAX_ITER):
        s = torch.sigmoid(x - t[:, None])
        f = s.sum(-1) - k
        if float(f.abs().max()) <= tol * k:
            break
        lo = torch.where(f > 0, t, lo)
        hi = torch.where(f > 0, hi, t)
        slope = (s * (1 - s)).sum(-1)
        step = t + f / slope.clamp_min(1e-300)
        t = torch.where((step > lo) & (step < hi), step, (lo + hi) / 2)
    return (t / beta).to(values.dtype)


def nm_lambda(gq: Tensor, s: Tensor, m: int) -> Tensor:
    """Per-group sum_i g_i m_i (1 - m_i) / S_g, expanded back to one value per item."""
    return (gq.reshape(-1, m).sum(-1) / s).repeat_interleave(m)


def update_nm(group: Group, method: str, fraction: float, beta_eff: float, scale_mean: bool
              ) -> None:
    """A step's masks for an N:M group (values already computed): hard top-ceil(k) per run,
    and for spartan the per-run tau of the soft mask."""
    g = group
    prev = g.h if method == "imp" and not bool(g.h.all()) else None
    g.set_hard(nm_hard(g.v, g.nm, nm_keep(fraction, g.nm), prev))
    if method == "spartan":
        mean = float(g.v.mean())
        g.beta = beta_eff / mean if scale_mean and mean > 0 else beta_eff / g.c0
        g.tau = nm_threshold(g.v, g.nm, fraction * g.nm, g.beta)
        g.mode = "soft"
    else:
        g.mode = "ste" if method == "dual_averaging" else "hard"
    g.rebuild(values_ready=True)
