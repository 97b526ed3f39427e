"""Cost-weighted top-k: the soft mask of Spartan (Tai, Tian & Lim, NeurIPS 2022) and its hard twin.

Soft: m_i = sigmoid(beta * (v_i / c_i - tau)) with tau the root of sum_i c_i m_i = budget.
Hard: the items with the largest v_i / c_i whose costs fit in the budget (fractional knapsack).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _check(values: Tensor, costs: Tensor | None, budget: float) -> Tensor:
    if values.dim() != 1:
        raise ValueError(f"values must be 1-D, got shape {tuple(values.shape)}")
    if values.numel() == 0:
        raise ValueError("values is empty")
    if not bool(torch.isfinite(values).all()):
        raise ValueError("values must be finite")
    if costs is None:
        costs = torch.ones_like(values)
    if costs.shape != values.shape:
        raise ValueError(f"costs shape {tuple(costs.shape)} != values shape {tuple(values.shape)}")
    if not bool(torch.isfinite(costs).all()) or not bool((costs > 0).all()):
        raise ValueError("costs must be finite and > 0")
    total = float(costs.sum())
    if not (0.0 < budget < total):
        raise ValueError(f"budget must be in (0, sum(costs)={total:g}), got {budget!r}")
    return costs


def hard_topk(values: Tensor, costs: Tensor | None, budget: float) -> Tensor:
    """Bool mask of the items with the largest values/costs whose total cost fits in budget."""
    costs = _check(values, costs, budget)
    ratio = values / costs
    order = torch.sort(ratio, descending=True, stable=True).indices
    spent = torch.cumsum(costs[order].double(), 0)
    keep = torch.zeros_like(values, dtype=torch.bool)
    keep[order[spent <= budget * (1 + 1e-12)]] = True
    return keep


def _solve_tau(ratio: Tensor, costs: Tensor, budget: float, beta: float) -> float:
    total = float(costs.sum())
    margin = (abs(math.log(budget / (total - budget))) + 30.0) / beta
    lo, hi = float(ratio.min()) - margin, float(ratio.max()) + margin
    tau = 0.5 * (lo + hi)
    for _ in range(200):
        m = torch.sigmoid(beta * (ratio - tau))
        f = float((costs * m).sum()) - budget
        if abs(f) <= 1e-7 * budget:
            break
        if f > 0:
            lo = tau
        else:
            hi = tau
        slope = beta * float((costs * m * (1 - m)).sum())
        step = tau + f / slope if slope > 0 else lo - 1.0
        tau = step if lo < step < hi else 0.5 * (lo + hi)
    return tau


class _SoftTopK(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values: Tensor, costs: Tensor, budget: float, beta: float) -> Tensor:  # type: ignore[override]
        ratio = values / costs
        tau = _solve_tau(ratio, costs, budget, beta)
        m = torch.sigmoid(beta * (ratio - tau))
        ctx.save_for_backward(m, costs)
        ctx.beta = beta
        return m

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        m, costs = ctx.saved_tensors
        w = m * (1 - m)
        s = (costs * w).sum()
        grad = ctx.beta * w * (g / costs - (g * w).sum() / s)
        return grad, None, None, None


def soft_topk(values: Tensor, costs: Tensor | None, budget: float, beta: float) -> Tensor:
    """Soft mask m in [0, 1] with sum(costs * m) == budget; differentiable in values."""
    costs = _check(values, costs, budget)
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta!r}")
    dtype = values.dtype
    work = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    m = _SoftTopK.apply(values.to(work), costs.to(work), float(budget), float(beta))
    return m.to(dtype)
