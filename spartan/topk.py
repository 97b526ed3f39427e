"""Cost-weighted top-k: the soft mask of Spartan (Tai, Tian & Lim, NeurIPS 2022) and its hard twin.

Soft: m_i = sigmoid(beta (v_i / c_i - tau)) with tau the root of F(tau) = sum_i c_i m_i = budget,
the closed form of the entropic optimal transport of the items onto two bins (keep, drop). tau is
found by safeguarded Newton on log F (on log of the dropped mass when more than half is kept),
exact on the sigmoid's exponential tails, with bisection as fallback. It starts from the caller's
warm start, or from the root on a random sample 8 times smaller, found the same way, down to the
hard threshold of at most SORT_MAX items. The solve works in u = beta tau and subtracts u in two
parts (work-dtype value, then remainder), so tau is not stuck on the float32 grid. Passes run in
chunks (spartan._chunked); the host syncs once per Newton iteration.

Hard: `hard_topk` / `hard_threshold`, the fractional knapsack (spartan._knapsack).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from spartan._chunked import (
    buffer,
    check_beta,
    check_costs,
    check_finite,
    gather,
    part,
    sample,
    spans,
    split_scalar,
    sum64,
    validate,
    work_dtype,
)
from spartan._knapsack import SORT_MAX, hard_threshold, hard_topk, sorted_cut

__all__ = ["hard_threshold", "hard_topk", "newton", "soft_mask", "soft_mask_from_tau",
           "soft_topk", "solve_threshold"]

log = logging.getLogger(__name__)

_SAMPLE = 1 << 14  # at most this many items sampled to start the solve
_MAX_ITER = 100
_ROUGH = 1e-3  # relative budget error of a start computed on a sample (at most 30 iterations)
TOL = {torch.float32: 1e-5, torch.float64: 1e-11}  # relative budget error of the solve


def no_autocast(t: Tensor) -> torch.autocast:
    """Mask math runs in float32 whatever autocast the training loop uses."""
    return torch.autocast(t.device.type, enabled=False)


def _shift(u: float, dtype: torch.dtype) -> tuple[Tensor, float]:
    u1, u2 = split_scalar(u, dtype)
    return torch.tensor(-u1, dtype=dtype), u2


def _logits(v: Tensor, c: Tensor | None, beta: float, shift: tuple[Tensor, float],
            out: Tensor) -> Tensor:
    """out = beta v / c - u, shift = _shift(u): the one arithmetic of every soft mask here."""
    x = v.to(out.dtype) if c is None else torch.div(v.to(out.dtype), c, out=out)
    torch.add(shift[0], x, alpha=beta, out=out)  # fused multiply-add
    return out.sub_(shift[1]) if shift[1] else out


def _evaluate(v: Tensor, c: Tensor | None, beta: float, u: float, ws: Tensor, out: Tensor | None,
              probe: bool = False) -> list[float]:
    """[F, S] = [sum c m, sum c m (1 - m)] at u, plus min and max of the logits when probing
    (one host sync); the mask m goes to out when given."""
    sums, ext, shift = [], [], _shift(u, ws.dtype)
    for a, b in spans(v.numel(), v.device):
        z = _logits(v[a:b], part(c, a, b), beta, shift, ws[0, :b - a] if out is None else out[a:b])
        if probe:
            ext.append(torch.stack(torch.aminmax(z)))
        m, w = z.sigmoid_(), ws[1, :b - a]
        if c is None:
            sums.append(m.sum())
            torch.addcmul(m, m, m, value=-1.0, out=w)
        else:
            sums.append(torch.mul(m, c[a:b], out=w).sum())
            w.addcmul_(w, m, value=-1.0)
        sums.append(w.sum())
    f_s = torch.stack(sums).view(-1, 2).to(torch.float64).sum(0)
    if not probe:
        return f_s.tolist()
    zz = torch.stack(ext)
    return torch.cat([f_s, zz[:, 0].min().view(1).double(), zz[:, 1].max().view(1).double()]
                     ).tolist()


def newton(evaluate: Callable[[float, bool], list[float]], k: float, total: float, u: float,
           tol: float) -> float:
    """Root u of F(u) = k (F decreasing). evaluate(u, probe) returns [F, S] at u, plus the min
    and max logit when probing; its last call is at the returned u."""
    big = k > 0.5 * total  # then Newton on log of the dropped mass, else of the kept mass
    target = math.log(total - k) if big else math.log(k)
    best_u, best_r, prev_r, lo_seen, hi_seen = u, math.inf, math.inf, False, False
    lo = hi = math.nan
    for it in range(_MAX_ITER if tol < _ROUGH else 30):
        f, s, *ext = evaluate(u, it == 0)
        if it == 0:  # bounds: at zmax + u + span every m < min(k, total - k) / (e total)
            check_finite(*ext)
            span = math.log(total / min(k, total - k)) + 1.0
            lo, hi = ext[0] + u - span, ext[1] + u + span
        r = f - k
        if abs(r) < abs(best_r):
            best_u, best_r = u, r
        if abs(r) <= tol * k:
            return u
        if r > 0:
            lo, lo_seen = max(lo, u), True
        else:
            hi, hi_seen = min(hi, u), True
        nxt = math.nan
        mass = total - f if big else f  # Newton on log(mass) - target
        if s > 0 and mass > 0:
            nxt = u + (-1.0 if big else 1.0) * (math.log(mass) - target) * mass / s
        if not lo < nxt < hi or (lo_seen and hi_seen and abs(r) > 0.5 * abs(prev_r)):
            nxt = 0.5 * (lo + hi)
        prev_r = r
        if nxt == u or hi - lo <= 1e-15 * max(1.0, abs(u)):
            break
        u = nxt
    if tol < _ROUGH:
        log.warning("soft top-k: budget met only to %.2e relative", abs(best_r) / k)
    if best_u != u:
        evaluate(best_u, False)
    return best_u


def _root(v: Tensor, c: Tensor | None, beta: float, k: float, total: float, tol: float,
          u0: float | None, out: Tensor | None) -> float:
    """u = beta tau solving sum c sigmoid(beta v / c - u) = k."""
    n, dtype = v.numel(), work_dtype(v.dtype)
    if u0 is None or not math.isfinite(u0):
        if n > SORT_MAX:  # the root on a random sample 8 times smaller, roughly
            size = max(SORT_MAX, min(_SAMPLE, n // 8))
            idx = sample(n, size, v.device)
            cs = gather(c, idx)
            ts = float(size) if cs is None else sum64(cs)
            u0 = _root(v[idx], cs, beta, k / total * ts, ts, _ROUGH, None, None)
        else:  # the hard threshold
            z = _logits(v, c, beta, _shift(0.0, dtype), torch.empty(n, dtype=dtype,
                                                                      device=v.device))
            u0 = sorted_cut(z, c, k)[0]
    ws = buffer(n, dtype, v.device, 2)
    return newton(lambda u, probe: _evaluate(v, c, beta, u, ws, out, probe), k, total, u0, tol)


def _solve(values: Tensor, costs: Tensor | None, budget: float, beta: float,
           tau_init: float | None, mask: bool) -> tuple[float, Tensor | None, Tensor | None]:
    beta = check_beta(beta)
    c, total = validate(values, costs, budget)
    v = values.detach()
    out = torch.empty(v.numel(), dtype=work_dtype(v.dtype), device=v.device) if mask else None
    u0 = None if tau_init is None else beta * float(tau_init)
    with torch.no_grad(), no_autocast(values):
        u = _root(v, c, beta, float(budget), total, TOL[work_dtype(v.dtype)], u0, out)
    return u / beta, out, c


def _mask(v: Tensor, c: Tensor | None, beta: float, u: float, out: Tensor | None) -> Tensor:
    m = torch.empty(v.numel(), dtype=work_dtype(v.dtype), device=v.device) if out is None else out
    shift = _shift(u, m.dtype)
    for a, b in spans(m.numel(), m.device):
        _logits(v[a:b], part(c, a, b), beta, shift, m[a:b]).sigmoid_()
    return m


def solve_threshold(values: Tensor, costs: Tensor | None, budget: float, beta: float,
                    tau_init: float | None = None) -> float:
    """tau of the soft mask sigmoid(beta (v / c - tau)) with sum(c m) = budget (to 1e-5 relative
    in float32); tau_init (e.g. last step's tau) warm-starts the Newton iterations."""
    return _solve(values, costs, budget, beta, tau_init, False)[0]


class _SoftMask(torch.autograd.Function):
    """m = sigmoid(beta (v / c - tau)); the backward treats tau as tau(v) at a fixed budget."""

    @staticmethod
    def forward(ctx: Any, values: Tensor, c: Tensor | None, tau: float,  # type: ignore[override]
                beta: float, ready: Tensor | None) -> Tensor:
        m = _mask(values, c, beta, beta * tau, None) if ready is None else ready
        ctx.save_for_backward(m, c)
        ctx.beta, ctx.dtype = beta, values.dtype
        return m.to(values.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        # dL/dv = beta m (1 - m) (g / c - lam), lam = sum g m (1 - m) / sum c m (1 - m)
        m, c = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        g = g.to(m.dtype)
        w = buffer(m.numel(), m.dtype, m.device)[0]
        parts = []
        for a, b in spans(m.numel(), m.device):
            wm = torch.addcmul(m[a:b], m[a:b], m[a:b], value=-1.0, out=w[:b - a])
            parts += [wm.sum() if c is None else torch.dot(wm, c[a:b]), torch.dot(wm, g[a:b])]
        s, gw = torch.stack(parts).view(-1, 2).sum(0)
        lam = gw / s.clamp_min(torch.finfo(m.dtype).tiny)
        grad = torch.empty_like(m)
        for a, b in spans(m.numel(), m.device):
            wm = torch.addcmul(m[a:b], m[a:b], m[a:b], value=-1.0, out=w[:b - a])
            x = torch.sub(g[a:b], lam, out=grad[a:b]) if c is None else torch.div(
                g[a:b], c[a:b], out=grad[a:b]).sub_(lam)
            x.mul_(wm).mul_(ctx.beta)
        return grad.to(ctx.dtype), None, None, None, None


def _mask_args(values: Tensor, costs: Tensor | None, tau: float,
               beta: float) -> tuple[Tensor | None, float]:
    if not math.isfinite(tau):
        raise ValueError(f"tau must be finite, got {tau!r}")
    return check_costs(values, costs)[0], check_beta(beta)


@torch.no_grad()
def soft_mask(values: Tensor, costs: Tensor | None, tau: float, beta: float,
              out: Tensor | None = None) -> Tensor:
    """sigmoid(beta (v / c - tau)) without autograd, in float32 (float64 for float64 values),
    into out if given: the arithmetic `solve_threshold` evaluates, so sum(c m) meets its
    budget to the solve's tolerance (a plain sigmoid(beta * (v - tau)) rounds tau to float32,
    which can cost ~1e-4 of the budget when beta * tau is large)."""
    c, beta = _mask_args(values, costs, tau, beta)
    if out is not None and (out.shape != values.shape or out.dtype != work_dtype(values.dtype)):
        raise ValueError(f"out must be a {work_dtype(values.dtype)} tensor of shape "
                         f"{tuple(values.shape)}")
    with no_autocast(values):
        return _mask(values.detach(), c, beta, beta * float(tau), out)


def soft_mask_from_tau(values: Tensor, costs: Tensor | None, tau: float, beta: float) -> Tensor:
    """m = sigmoid(beta (v / c - tau)) with the implicit gradient of DESIGN.md: tau is taken as
    the root for the budget sum(c m) (from `solve_threshold`), which the backward holds fixed."""
    c, beta = _mask_args(values, costs, tau, beta)
    with no_autocast(values):
        out: Tensor = _SoftMask.apply(values, c, float(tau), beta, None)
    return out


def soft_topk(values: Tensor, costs: Tensor | None, budget: float, beta: float) -> Tensor:
    """Soft mask m in [0, 1] with sum(costs * m) == budget (1e-5 relative in float32, 1e-11 in
    float64; float16/bfloat16 are computed in float32). Differentiable in values, not costs."""
    tau, m, c = _solve(values, costs, budget, beta, None, True)
    with no_autocast(values):
        out: Tensor = _SoftMask.apply(values, c, tau, check_beta(beta), m)
    return out
