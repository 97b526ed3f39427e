"""The masked weights of a Sparsifier: budget groups, mask updates and the autograd function.

A budget group is the set of layers that share one knapsack: the whole model under global
allocation, one layer otherwise. A group's block values sit in one flat float32 buffer, so the
threshold search, the soft mask and the implicit gradient run as single tensor operations.

Soft mask (Spartan, Tai, Tian & Lim, NeurIPS 2022): m = sigmoid(b (v / c - tau)), tau solved each
step so that sum(c m) = budget; forward weight w * m * h with h the hard top-k mask. Backward
treats h as identity, so dL/dw = G m + sign(w) dL/dv with the implicit gradient of DESIGN.md:
dL/dv_j = b m_j (1 - m_j) (g_j / c_j - sum_i g_i m_i (1 - m_i) / S), g = dL/dm, S = sum c m (1 - m).
All buffers are computed once per step (`Group.update`), so the forward costs no extra pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from spartan import _fast
from spartan.layout import Block, block_sum, blocked, per_block
from spartan.nm import nm_lambda, update_nm
from spartan.topk import hard_threshold, solve_threshold

Mode = Literal["dense", "soft", "ste", "hard"]
_TINY = 1e-30


@dataclass(eq=False)
class MaskedLayer:
    """One masked weight: where it lives, its blocks, costs and forward buffer."""

    name: str
    module: nn.Module
    attr: str
    param: nn.Parameter
    block: Block  # block in use (1x1 after a fallback)
    grid: tuple[int, int]
    cost: Tensor  # (G0, G1) float32, cost of each block
    fallback: str | None = None
    start: int = 0  # slice of the group's flat buffers
    stop: int = 0
    weff: Tensor | None = None  # forward weight, refreshed each step
    version: int = -1  # param._version when weff was built
    layout: tuple[torch.device, torch.dtype] = field(init=False)  # the weight's when attached

    def __post_init__(self) -> None:
        self.layout = (self.param.device, self.param.dtype)

    @property
    def elementwise(self) -> bool:
        return self.grid[0] * self.grid[1] == self.param.numel()

    def values_into(self, out: Tensor) -> None:
        """Block values sum(|w|) into a flat float32 slice."""
        w = self.param.detach()
        if self.elementwise and w.dtype == out.dtype:
            torch.abs(w.reshape(-1), out=out)
        elif self.elementwise:
            out.copy_(w.reshape(-1).abs())
        else:
            block_sum(w.abs(), self.block, out=out)

    def mul_blocks(self, x: Tensor, per: Tensor, out: Tensor | None = None) -> Tensor:
        """x (weight-shaped) times a flat per-block slice, broadcast over each block."""
        shape = self.param.shape
        if self.elementwise:
            return torch.mul(x, per.view(shape), out=out) if out is not None else x * per.view(
                shape)
        p = per_block(per.view(self.grid))
        if out is not None:
            torch.mul(blocked(x, self.block), p, out=blocked(out, self.block))
            return out
        return (blocked(x, self.block) * p).reshape(shape)


@dataclass(eq=False)
class Group:
    """Layers sharing one budget, and their flat per-block buffers."""

    layers: list[MaskedLayer]
    v: Tensor  # block values
    c: Tensor  # block costs in solver units (all ones when a group's costs are uniform)
    unit: bool  # costs uniform: the solver gets costs=None and budgets in blocks
    c0: float  # cost of one block when unit, else 1.0
    total_cost: float  # sum of the real costs
    mode: Mode = "dense"
    nm: int = 0  # M of an N:M allocation (one layer, unit costs), 0 otherwise
    h_: Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.bool))
    hf_: Tensor = field(default_factory=lambda: torch.empty(0))  # h as 0/1 floats
    stale: bool = False  # the fused path moved the hard threshold: h_ and hf_ are out of date
    tau: float | Tensor | None = None  # per group of nm items under N:M
    beta: float = 0.0  # beta in solver units (scale and block factor applied)
    m: Tensor | None = None
    mm1: Tensor | None = None  # m (1 - m)
    s: Tensor | None = None  # S = sum(c m (1 - m)), 0-d
    # Elementwise layers only: dL/dw = G * p + lam_coef * a, lam from dot(G, q) (see backward).
    p: Tensor | None = None  # m + beta m (1 - m) |w| / c
    a: Tensor | None = None  # m (1 - m) sign(w)
    q: Tensor | None = None  # m (1 - m) w
    keep: Tensor | None = None  # m h
    fast: Any = None  # spartan._fast.FastState while the fused CPU path applies
    fast_mode: bool = False  # the buffers in use come from the fused path

    @property
    def h(self) -> Tensor:
        """Hard mask (bool, one per block)."""
        self.settle_h()
        return self.h_

    @property
    def hf(self) -> Tensor:
        """h as 0/1 floats."""
        self.settle_h()
        return self.hf_

    def settle_h(self) -> None:
        """Make h after a fused step (whose forward needs none), from the values it was cut on:
        before the values change."""
        if self.stale:
            self.set_hard(_fast.hard_mask(self))

    @property
    def n(self) -> int:
        return self.v.numel()

    @property
    def solver_costs(self) -> Tensor | None:
        return None if self.unit else self.c

    def solver_budget(self, fraction: float) -> float:
        return fraction * self.total_cost / self.c0

    def compute_values(self) -> None:
        self.settle_h()
        for layer in self.layers:
            layer.values_into(self.v[layer.start:layer.stop])

    def release_soft(self) -> None:
        """Drop the soft-mask buffers (frozen or finalized groups need only h)."""
        self.m = self.mm1 = self.s = self.p = self.a = self.q = self.keep = None

    def set_dense(self) -> None:
        self.mode, self.tau, self.fast, self.fast_mode = "dense", None, None, False
        self.release_soft()
        self.set_hard(torch.ones(self.n, dtype=torch.bool, device=self.v.device))
        for layer in self.layers:
            layer.weff = None

    def update(self, method: str, fraction: float, beta_eff: float, scale_mean: bool) -> None:
        """New masks for this step: hard top-k, and for spartan tau of the soft mask."""
        if fraction >= 1.0:
            self.set_dense()
            return
        budget = self.solver_budget(fraction)
        if _fast.update(self, method, budget, beta_eff, scale_mean):
            return
        self.compute_values()
        fast, self.fast = self.fast, None  # the torch path below; seed() takes it back
        if self.nm:
            update_nm(self, method, fraction, beta_eff, scale_mean)
            return
        if method == "imp" and not bool(self.h.all()):
            self.set_hard(self._prune_further(budget))
        else:
            self.set_hard(hard_threshold(self.v, self.solver_costs, budget))
        if method == "spartan":
            if scale_mean:  # cost-weighted mean of v / c, in solver units
                den = float(self.n) if self.unit else float(self.c.sum())
                mean = float(self.v.sum()) / den
                self.beta = beta_eff / mean if mean > 0 else beta_eff
            else:
                self.beta = beta_eff / self.c0
            warm = self.tau if isinstance(self.tau, float) else None
            self.tau = solve_threshold(self.v, self.solver_costs, budget, self.beta,
                                       tau_init=warm)
            self.mode = "soft"
        else:
            self.mode = "ste" if method == "dual_averaging" else "hard"
        self.rebuild(values_ready=True)
        self.fast = fast
        _fast.seed(self, method)

    def _prune_further(self, budget: float) -> Tensor:
        """IMP: the top-k among the weights kept so far (pruned weights never come back)."""
        idx = torch.nonzero(self.h).squeeze(1)
        costs = None if self.unit else self.c[idx]
        total = float(idx.numel()) if costs is None else float(costs.sum(dtype=torch.float64))
        h = torch.zeros_like(self.h)
        if budget >= total:
            h[idx] = True
        else:
            h[idx[hard_threshold(self.v[idx], costs, budget)]] = True
        return h

    def set_hard(self, h: Tensor) -> None:
        # Float copy once per step: bool x float products are slow on CPU, and so is the
        # bool -> float cast; the uint8 view converts several times faster.
        self.h_, self.hf_, self.stale = h, h.view(torch.uint8).to(self.v.dtype), False

    def rebuild(self, values_ready: bool = False) -> None:
        """Forward and backward buffers from the current weights, h, tau and beta."""
        if self.mode == "dense" or _fast.rebuild(self):
            return
        self.fast_mode = False
        keep = self.hf
        if self.mode == "soft":
            if not values_ready:
                self.compute_values()
            keep = self._soft_buffers()
        for layer in self.layers:
            w = layer.param.detach()
            if layer.weff is None or layer.weff.shape != w.shape:
                layer.weff = torch.empty(w.shape, dtype=w.dtype, device=w.device)
            layer.mul_blocks(w, keep[layer.start:layer.stop], out=layer.weff)

    def _soft_buffers(self) -> Tensor:
        assert self.tau is not None
        v, beta = self.v, self.beta
        if self.m is None or self.mm1 is None:
            self.m, self.mm1 = torch.empty_like(v), torch.empty_like(v)
        m, mm1 = self.m, self.mm1
        elementwise = [lay for lay in self.layers if lay.elementwise]
        if elementwise and (self.p is None or self.a is None or self.q is None):
            self.p, self.a, self.q = (torch.empty_like(v) for _ in range(3))
        u = v if self.unit else torch.div(v, self.c, out=self.p if elementwise else None)
        # m = sigmoid(beta (u - tau)), written as -beta tau + beta u in one pass.
        if isinstance(self.tau, Tensor):  # N:M: one tau per group of nm items
            shift = self.tau.to(v.device, v.dtype).repeat_interleave(self.nm).mul_(-beta)
        else:
            shift = torch.full((), -beta * self.tau, dtype=v.dtype, device=v.device)
        torch.add(shift, u, alpha=beta, out=m)
        m.sigmoid_()
        torch.addcmul(m, m, m, value=-1.0, out=mm1)
        if self.nm:
            self.s = mm1.view(-1, self.nm).sum(-1).clamp_min(_TINY)
        else:
            self.s = (mm1.sum() if self.unit else torch.dot(mm1, self.c)).clamp_min(_TINY)
        if elementwise:
            assert self.p is not None and self.a is not None and self.q is not None
            torch.addcmul(m, mm1, u, value=beta, out=self.p)
            for lay in elementwise:
                w, sl = lay.param.detach().reshape(-1), slice(lay.start, lay.stop)
                torch.copysign(mm1[sl], w, out=self.a[sl])
                torch.mul(mm1[sl], w, out=self.q[sl])
        if self.keep is None:
            self.keep = torch.empty_like(v)
        return torch.mul(m, self.hf, out=self.keep)

    def bake(self) -> None:
        """Write the forward weights into the dense weights (before a freeze or finalize)."""
        with torch.no_grad():
            for layer in self.layers:
                if layer.weff is not None:
                    layer.param.copy_(layer.weff)


class MaskedWeights(torch.autograd.Function):
    """All masked weights of one group: forward returns the prepared w * mask buffers."""

    @staticmethod
    def forward(ctx: Any, group: Group, *weights: Tensor) -> tuple[Tensor, ...]:  # type: ignore[override]
        ctx.group, ctx.mode = group, group.mode
        if group.mode == "soft" and group.fast_mode:
            ctx.mode, ctx.fast = "fast", group.fast
            ctx.beta, ctx.s = group.beta, float(group.s)  # type: ignore[arg-type]
            ctx.save_for_backward(*weights, group.m)
            return tuple(layer.weff.detach() for layer in group.layers)  # type: ignore[union-attr]
        extra = [group.m, group.mm1, group.s] if group.mode == "soft" else []
        if group.mode == "soft" and group.p is not None:
            extra += [group.p, group.a, group.q]
        ctx.save_for_backward(*weights, group.hf if group.mode == "hard" else group.v, *extra)
        outs = []
        for layer in group.layers:
            assert layer.weff is not None
            outs.append(layer.weff.detach())
        return tuple(outs)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        group: Group = ctx.group
        saved = ctx.saved_tensors
        n = len(group.layers)
        weights, h = saved[:n], saved[n]
        if ctx.mode == "ste":
            return (None, *grads)
        if ctx.mode == "fast":
            return (None, *_fast.backward(group, ctx.fast, weights, grads, saved[n], ctx.beta,
                                          ctx.s))
        if ctx.mode == "hard":
            pairs = zip(group.layers, grads, strict=True)
            return (None, *[lay.mul_blocks(g, h[lay.start:lay.stop]) for lay, g in pairs])
        return (None, *_soft_backward(group, weights, grads, saved[n + 1:]))


def _soft_backward(
    group: Group, weights: tuple[Tensor, ...], grads: tuple[Tensor, ...],
    buffers: tuple[Tensor, ...],
) -> list[Tensor]:
    """dL/dw = G m + sign(w) dL/dv (block broadcast), dL/dv from the implicit gradient.

    Elementwise layers fold it into dL/dw = G p - beta lam a with p = m + beta m (1 - m) |w| / c
    and a = m (1 - m) sign(w), both prepared at the step, so backward reads G twice.
    """
    m, mm1, s = buffers[:3]
    p, a, q = buffers[3:] if len(buffers) == 6 else (None, None, None)
    beta, layers = group.beta, group.layers
    if group.nm:  # one elementwise layer; lam per group of nm items
        (g,), (w,) = grads, weights
        assert p is not None and a is not None and q is not None
        lam_nm = nm_lambda(g.reshape(-1).to(q.dtype) * q, s, group.nm).view(w.shape)
        grad = torch.mul(g, p.view(w.shape)).addcmul_(a.view(w.shape), lam_nm, value=-beta)
        return [grad if grad.dtype == w.dtype else grad.to(w.dtype)]
    gm: list[Tensor | None] = []
    lam = torch.zeros((), dtype=group.v.dtype, device=group.v.device)
    for lay, g, w in zip(layers, grads, weights, strict=True):
        sl = slice(lay.start, lay.stop)
        if lay.elementwise:
            assert q is not None
            lam += torch.dot(g.reshape(-1).to(q.dtype), q[sl])
            gm.append(None)
        else:
            gb = block_sum(g * w, lay.block).reshape(-1).to(group.v.dtype)
            lam += torch.dot(gb, mm1[sl])
            gm.append(gb)
    lam /= s  # sum_i (dL/dm_i) m_i (1 - m_i) / S
    out = []
    for lay, g, w, per in zip(layers, grads, weights, gm, strict=True):
        sl = slice(lay.start, lay.stop)
        if per is None:
            assert p is not None and a is not None
            grad = torch.mul(g, p[sl].view(w.shape)).addcmul_(a[sl].view(w.shape), lam * -beta)
        else:
            if not group.unit:
                per = per / group.c[sl]
            x = (per - lam).mul_(mm1[sl]).mul_(beta)  # dL/dv per block
            b5 = blocked(w, lay.block)
            grad = torch.sign(b5).mul_(per_block(x.view(lay.grid)))
            grad.addcmul_(blocked(g, lay.block), per_block(m[sl].view(lay.grid)))
            grad = grad.reshape(w.shape)
        out.append(grad if grad.dtype == w.dtype else grad.to(w.dtype))
    return out


def beta_factor(block: Block) -> float:
    """beta grows with sqrt(block size) (DESIGN.md): block values average R * C weights."""
    return math.sqrt(block[0] * block[1])
