"""Cost-weighted top-k: the soft mask of Spartan (Tai, Tian & Lim, NeurIPS 2022) and its hard twin.

Soft: m_i = sigmoid(beta (v_i / c_i - tau)) with tau the root of F(tau) = sum_i c_i m_i = budget,
the closed form of the entropic optimal transport of the items onto two bins (keep, drop). tau is
found by safeguarded Newton on log F (on log of the dropped mass when more than half is kept),
exact on the sigmoid's exponential tails, with bisection as fallback. It starts from the caller's
warm start, or from the root on a random sample 8 times smaller, found the same way, down to the
hard threshold of at most _SORT_MAX items. The solve works in u = beta tau and subtracts u in two
parts (work-dtype value, then remainder), so tau is not stuck on the float32 grid.

Hard: the fractional knapsack on v / c, i.e. the longest prefix of the items by ratio (ties: lower
index first) whose costs fit. No full sort: a bracket from a sample (cost-proportional for
weighted costs), one exact pass that keeps the items inside it, then the same on those, down to a
selection (unit costs) or a sort of at most _SORT_MAX items. Costs are summed in float64.

On CPU each pass runs chunk by chunk through small reused buffers: nothing of the input's size is
allocated but the returned mask (fresh large buffers cost more in page faults than the arithmetic).
On other devices a chunk is the whole tensor; the host syncs once per Newton iteration.
"""

from __future__ import annotations

import logging
import math
import struct
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

log = logging.getLogger(__name__)

_SAMPLE = 1 << 14  # items sampled to start the soft solve and to bracket the unit-cost hard cut
_SORT_MAX = 1 << 11  # at most this many items: the hard cut is a plain sort (fast up to here)
_SELECT_MAX = 1 << 16  # at most this many items of unit cost: the hard cut is a kthvalue
_CHUNK = 1 << 20  # CPU work unit: buffers stay in L3, few parallel regions per pass
_MAX_ITER = 100
_ROUGH = 1e-3  # relative budget error of a start computed on a sample (at most 30 iterations)
_SEED = 20221128
_TOL = {torch.float32: 1e-5, torch.float64: 1e-11}  # relative budget error of the solve
_checked: dict[tuple[int, torch.dtype], list[Any]] = {}  # costs checked: [ref, version, total, pps]


def _work(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _spans(n: int, device: torch.device) -> Iterator[tuple[int, int]]:
    step = _CHUNK if device.type == "cpu" else n
    for a in range(0, n, step):
        yield a, min(a + step, n)


def _buf(n: int, dtype: torch.dtype, device: torch.device, rows: int = 1) -> Tensor:
    return torch.empty(rows, min(n, _CHUNK if device.type == "cpu" else n), dtype=dtype,
                       device=device)


def _sl(t: Tensor | None, a: int, b: int) -> Tensor | None:
    return None if t is None else t[a:b]


def _at(t: Tensor | None, idx: Tensor) -> Tensor | None:
    return None if t is None else t[idx]


def _costs(values: Tensor, costs: Tensor | None) -> tuple[Tensor | None, float]:
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
    c, key = costs.detach().to(_work(values.dtype)), (id(costs), _work(values.dtype))
    seen = _checked.get(key)
    if seen is not None and seen[0]() is costs and seen[1] == costs._version:
        return c, seen[2]
    cmin, cmax = torch.stack(torch.aminmax(c)).tolist()
    if not (cmin > 0 and math.isfinite(cmax)):
        raise ValueError("costs must be finite and > 0")
    total = _sum64(c)
    if len(_checked) > 16:
        _checked.clear()
    _checked[key] = [weakref.ref(costs), costs._version, total, None]
    return c, total


def _validate(values: Tensor, costs: Tensor | None, budget: float) -> tuple[Tensor | None, float]:
    """Checked costs and their total; ValueError unless 0 < budget < total."""
    c, total = _costs(values, costs)
    if not 0.0 < float(budget) < total:
        raise ValueError(f"budget must be in (0, sum(costs)={total:g}), got {budget!r}")
    return c, total


def _check_beta(beta: float) -> float:
    if not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be finite and > 0, got {beta!r}")
    return float(beta)


def _sum64(x: Tensor, buf: Tensor | None = None) -> Any:
    """Sum in float64 (float32 sums drift by ~1e-7: too coarse for a knapsack over millions of
    items), as a 0-d tensor when buf (a float64 chunk) is given, else as a float."""
    if x.dtype == torch.float64 or x.device.type != "cpu":
        s = x.sum(dtype=torch.float64)
    else:
        b64 = buf if buf is not None else _buf(x.numel(), torch.float64, x.device)[0]
        s = torch.stack([b64[:b - a].copy_(x[a:b]).sum() for a, b in _spans(x.numel(), x.device)])
        s = s.sum()
    return s if buf is not None else float(s)


def _ratio(v: Tensor, div: Tensor | None, out: Tensor) -> Tensor:
    """v / div in out's dtype (v itself when that needs no arithmetic)."""
    if div is None:
        return v if v.dtype == out.dtype else out.copy_(v)
    return torch.div(v.to(out.dtype), div, out=out)


def _full_ratio(v: Tensor, div: Tensor | None) -> Tensor:
    return _ratio(v, div, torch.empty(v.numel(), dtype=_work(v.dtype), device=v.device))


def _finite(lo: float, hi: float) -> None:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError("values (and values / costs * beta) must be finite")


def _gen(device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(_SEED)


def _sample(n: int, size: int, device: torch.device) -> Tensor:
    return torch.randint(n, (size,), generator=_gen(device), device=device)


# ---------------------------------------------------------------- hard top-k


def _select_cut(x: Tensor, budget: float) -> tuple[float, int]:
    """(t, q) for unit costs by selection: keep x > t and the first q items with x == t."""
    _finite(*torch.stack(torch.aminmax(x)).tolist())
    j = min(int(math.floor(budget)), x.numel() - 1)  # items kept
    t = float(torch.kthvalue(x, x.numel() - j).values)  # the (j + 1)-th largest
    return t, j - int(torch.count_nonzero(x > t))


def _sorted_cut(x: Tensor, c: Tensor | None, budget: float) -> tuple[float, int]:
    """(t, q): keep x > t and the first q items (by index) with x == t. Plain stable sort."""
    xs, order = torch.sort(x, descending=True, stable=True)
    _finite(*xs[[-1, 0]].tolist())  # NaN sorts first
    if c is None:
        j = min(int(math.floor(budget)), x.numel() - 1)
    else:
        cum = c[order].to(torch.float64).cumsum(0)
        key = torch.tensor([budget], dtype=torch.float64, device=x.device)
        j = min(int(torch.searchsorted(cum, key, right=True)), x.numel() - 1)
    t = float(xs[j])
    return t, int(torch.count_nonzero(xs[:j] == t))


def _pps(c: Tensor, total: float) -> Tensor:
    """Indices of a stratified sample drawn with probability proportional to cost: plain
    quantiles of it estimate cost-weighted ones (kept with the costs' check: costs rarely
    change, a cumulative sum over all of them costs more than a cut)."""
    s = _SAMPLE
    jitter = torch.rand(s, generator=_gen(c.device), dtype=torch.float64, device=c.device)
    pos = (torch.arange(s, dtype=torch.float64, device=c.device) + jitter) * (total / s)
    b64, found, offset = _buf(c.numel(), torch.float64, c.device)[0], [], 0.0
    for a, b in _spans(c.numel(), c.device):
        cum = torch.cumsum(b64[:b - a].copy_(c[a:b]), 0).add_(offset)
        edges = torch.tensor([offset, float(cum[-1])], dtype=torch.float64, device=c.device)
        i0, i1 = torch.searchsorted(pos, edges).tolist()
        found.append(torch.searchsorted(cum, pos[i0:i1]).clamp_(max=b - a - 1).add_(a))
        offset = float(cum[-1])
    return torch.cat(found)


def _bracket(xs: Tensor, cs: Tensor | None, p: float, widen: float) -> tuple[float, float]:
    """Ratios (lo, hi): in the sample xs, cost share p - d lies above hi and p + d from lo on
    (cs None: every sampled item weighs the same)."""
    s = xs.numel()
    if cs is None:
        d = widen * (6.0 * math.sqrt(max(p * (1 - p), 1.0 / s) / s) + 2.0 / s)

        def largest(share: float) -> float:  # the ceil(share s)-th largest, by selection
            return float(torch.kthvalue(xs, s + 1 - min(s, max(1, math.ceil(share * s)))).values)

        return (largest(p + d) if p + d < 1 else -math.inf), (largest(p - d) if p > d else math.inf)
    xs, order = torch.sort(xs, descending=True)
    w = cs[order].to(torch.float64)
    cum = w.cumsum(0)
    s_eff = float(cum[-1]) ** 2 / float(w.square().sum())  # Kish effective sample size
    d = widen * (6.0 * math.sqrt(max(p * (1 - p), 1.0 / s_eff) / s_eff) + 2.0 / s_eff)
    key = torch.tensor([p - d, p + d], dtype=torch.float64, device=xs.device) * cum[-1]
    hi, lo = xs[torch.searchsorted(cum, key).clamp_(max=s - 1)].tolist()
    return (lo if p + d < 1 else -math.inf), (hi if p > d else math.inf)


def _pass(v: Tensor, div: Tensor | None, c: Tensor | None, lo: float, hi: float, total: float,
          ws: Tensor) -> tuple[float, Tensor, Tensor | None, float]:
    """One exact pass: (cost above the bracket, ratios and costs of the items inside, their
    cost). With both ends finite, inside is |x - mid| < half and the cost above mid comes from
    the sum of c sign(x - mid), exact in float arithmetic: comparisons that yield bools are the
    slow operations on CPU, so masks are made in float and copied to bool."""
    both = math.isfinite(lo) and math.isfinite(hi)
    mid = _split(0.5 * (lo + hi), ws.dtype)[0] if both else 0.0
    half = max(hi - mid, mid - lo) if both else 0.0
    exact = c is None and v.device.type == "cpu"  # a chunk's count of signs stays below 2**24
    b64 = _buf(v.numel(), torch.float64, v.device)[0]
    flags = torch.empty(ws.shape[1], dtype=torch.bool, device=v.device)
    probes, signs, found = [], [], []
    for a, b in _spans(v.numel(), v.device):
        x = _ratio(v[a:b], _sl(div, a, b), ws[0, :b - a])
        if both:
            d = torch.sub(x, mid, out=ws[1, :b - a])
            probes.append(d.sum())
            sg = torch.sign(d, out=ws[2, :b - a])
            signs.append(sg.sum() if exact else _sum64(sg if c is None else sg.mul_(c[a:b]), b64))
            inside = flags[:b - a].copy_(d.abs_().sub_(half).clamp_max_(0.0))  # nonzero: inside
        else:
            probes.append(x.sum())
            inside = torch.ge(x, lo) if math.isfinite(lo) else torch.le(x, hi)
        found.append(torch.nonzero(inside).squeeze(1).add_(a))
    if not math.isfinite(float(torch.stack(probes).sum())):  # NaN or inf, or a huge overflow
        for a, b in _spans(v.numel(), v.device):
            _finite(*torch.stack(torch.aminmax(_ratio(v[a:b], _sl(div, a, b), ws[0, :b - a])))
                    .tolist())
    idx = torch.cat(found)
    cc = _at(c, idx)
    xc = _ratio(v[idx], cc if div is c else _at(div, idx),
                torch.empty(idx.numel(), dtype=ws.dtype, device=v.device))
    w = None if cc is None else cc.to(torch.float64)
    inside_cost = float(idx.numel()) if w is None else float(w.sum())
    if not both:
        return (0.0 if math.isfinite(lo) else total - inside_cost), xc, cc, inside_cost
    at_mid, over_mid = ((xc == mid).to(torch.float64), (xc > mid).to(torch.float64))
    if w is not None:
        at_mid, over_mid = at_mid.mul_(w), over_mid.mul_(w)
    ends = torch.stack([torch.stack(signs).double().sum(), at_mid.sum(), over_mid.sum()]).tolist()
    return 0.5 * (ends[0] + total - ends[1]) - ends[2], xc, cc, inside_cost


def _cut(v: Tensor, div: Tensor | None, c: Tensor | None, budget: float, total: float,
         pps: Tensor | None = None) -> tuple[float, int]:
    """The hard threshold (t, q) of the ratios v / div under the budget, costs c; pps: a
    cost-proportional sample of the items, if at hand."""
    n = v.numel()
    if c is None and n <= _SELECT_MAX:
        return _select_cut(_full_ratio(v, div), budget)
    if n <= _SORT_MAX:
        return _sorted_cut(_full_ratio(v, div), c, budget)
    dtype = _work(v.dtype)
    ws = _buf(n, dtype, v.device, 3)
    for attempt in range(3):
        plain = c is None or pps is not None
        idx = pps if pps is not None else _sample(n, _SAMPLE if plain else _SORT_MAX, v.device)
        xs = _ratio(v[idx], _at(div, idx), torch.empty(idx.numel(), dtype=dtype, device=v.device))
        lo, hi = _bracket(xs, None if plain else _at(c, idx), budget / total, 4.0 ** attempt)
        above, xc, cc, inside = _pass(v, div, c, lo, hi, total, ws)
        if above <= budget < above + inside and xc.numel() < n:
            return _cut(xc, None, cc, budget - above, inside)
    log.debug("hard top-k bracket missed three times; sorting %d items", n)
    return _sorted_cut(_full_ratio(v, div), c, budget)


@torch.no_grad()
def hard_threshold(values: Tensor, costs: Tensor | None, budget: float) -> Tensor:
    """Bool mask of the longest prefix of the items, by v / c descending and index ascending on
    ties, whose total cost fits in budget: the fractional knapsack without its fractional item.
    Never over budget (costs summed in float64). Same as `hard_topk`."""
    c, total = _validate(values, costs, budget)
    v, n = values.detach(), values.numel()
    pps = None
    if c is not None and n > _SELECT_MAX:
        entry = _checked[(id(costs), c.dtype)]
        if entry[3] is None:
            entry[3] = _pps(c, total)
        pps = entry[3]
    t, q = _cut(v, c, c, float(budget), total, pps)
    ws = _buf(n, _work(v.dtype), v.device)[0]
    keep = torch.empty(n, dtype=torch.bool, device=v.device)
    for a, b in _spans(n, v.device):  # x > t, made in float (see _pass)
        keep[a:b].copy_(torch.sub(_ratio(v[a:b], _sl(c, a, b), ws[:b - a]), t).clamp_min_(0.0))
    for a, b in _spans(n, v.device):  # ties at t: the first q by index
        if q <= 0:
            break
        tied = torch.nonzero(_ratio(v[a:b], _sl(c, a, b), ws[:b - a]) == t).squeeze(1)[:q]
        keep[tied + a] = True
        q -= tied.numel()
    return keep


def hard_topk(values: Tensor, costs: Tensor | None, budget: float) -> Tensor:
    """The items with the largest values / costs whose costs fit in the budget (DESIGN.md)."""
    return hard_threshold(values, costs, budget)


# ---------------------------------------------------------------- soft top-k


def _no_autocast(t: Tensor) -> torch.autocast:
    return torch.autocast(t.device.type, enabled=False)


def _split(u: float, dtype: torch.dtype) -> tuple[float, float]:
    """u as u1 + u2: u1 its nearest value in dtype (what an op uses), u2 the remainder."""
    if dtype == torch.float64:
        return u, 0.0
    try:
        u1: float = struct.unpack("f", struct.pack("f", u))[0]
    except OverflowError:
        return u, 0.0
    return u1, (u - u1 if abs(u - u1) > 1e-7 else 0.0)


def _shift(u: float, dtype: torch.dtype) -> tuple[Tensor, float]:
    u1, u2 = _split(u, dtype)
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
    for a, b in _spans(v.numel(), v.device):
        z = _logits(v[a:b], _sl(c, a, b), beta, shift, ws[0, :b - a] if out is None else out[a:b])
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


def _newton(v: Tensor, c: Tensor | None, beta: float, k: float, total: float, u: float,
            tol: float, ws: Tensor, out: Tensor | None) -> float:
    """Root u of F(u) = k (F decreasing); out holds the mask at the returned u."""
    big = k > 0.5 * total  # then Newton on log of the dropped mass, else of the kept mass
    target = math.log(total - k) if big else math.log(k)
    best_u, best_r, prev_r, lo_seen, hi_seen = u, math.inf, math.inf, False, False
    lo = hi = math.nan
    for it in range(_MAX_ITER if tol < _ROUGH else 30):
        f, s, *ext = _evaluate(v, c, beta, u, ws, out, probe=it == 0)
        if it == 0:  # bounds: at zmax + u + span every m < min(k, total - k) / (e total)
            _finite(*ext)
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
        _evaluate(v, c, beta, best_u, ws, out)
    return best_u


def _root(v: Tensor, c: Tensor | None, beta: float, k: float, total: float, tol: float,
          u0: float | None, out: Tensor | None) -> float:
    """u = beta tau solving sum c sigmoid(beta v / c - u) = k."""
    n, dtype = v.numel(), _work(v.dtype)
    if u0 is None or not math.isfinite(u0):
        if n > _SORT_MAX:  # the root on a random sample 8 times smaller, roughly
            size = max(_SORT_MAX, min(_SAMPLE, n // 8))
            idx = _sample(n, size, v.device)
            cs = _at(c, idx)
            ts = float(size) if cs is None else _sum64(cs)
            u0 = _root(v[idx], cs, beta, k / total * ts, ts, _ROUGH, None, None)
        else:  # the hard threshold
            z = _logits(v, c, beta, _shift(0.0, dtype), torch.empty(n, dtype=dtype,
                                                                      device=v.device))
            u0 = _sorted_cut(z, c, k)[0]
    return _newton(v, c, beta, k, total, u0, tol, _buf(n, dtype, v.device, 2), out)


def _solve(values: Tensor, costs: Tensor | None, budget: float, beta: float,
           tau_init: float | None, mask: bool) -> tuple[float, Tensor | None, Tensor | None]:
    beta = _check_beta(beta)
    c, total = _validate(values, costs, budget)
    v = values.detach()
    out = torch.empty(v.numel(), dtype=_work(v.dtype), device=v.device) if mask else None
    u0 = None if tau_init is None else beta * float(tau_init)
    with torch.no_grad(), _no_autocast(values):
        u = _root(v, c, beta, float(budget), total, _TOL[_work(v.dtype)], u0, out)
    return u / beta, out, c


def _mask(v: Tensor, c: Tensor | None, beta: float, u: float, out: Tensor | None) -> Tensor:
    m = torch.empty(v.numel(), dtype=_work(v.dtype), device=v.device) if out is None else out
    shift = _shift(u, m.dtype)
    for a, b in _spans(m.numel(), m.device):
        _logits(v[a:b], _sl(c, a, b), beta, shift, m[a:b]).sigmoid_()
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
        w = _buf(m.numel(), m.dtype, m.device)[0]
        parts = []
        for a, b in _spans(m.numel(), m.device):
            wm = torch.addcmul(m[a:b], m[a:b], m[a:b], value=-1.0, out=w[:b - a])
            parts += [wm.sum() if c is None else torch.dot(wm, c[a:b]), torch.dot(wm, g[a:b])]
        s, gw = torch.stack(parts).view(-1, 2).sum(0)
        lam = gw / s.clamp_min(torch.finfo(m.dtype).tiny)
        grad = torch.empty_like(m)
        for a, b in _spans(m.numel(), m.device):
            wm = torch.addcmul(m[a:b], m[a:b], m[a:b], value=-1.0, out=w[:b - a])
            x = torch.sub(g[a:b], lam, out=grad[a:b]) if c is None else torch.div(
                g[a:b], c[a:b], out=grad[a:b]).sub_(lam)
            x.mul_(wm).mul_(ctx.beta)
        return grad.to(ctx.dtype), None, None, None, None


def _mask_args(values: Tensor, costs: Tensor | None, tau: float,
               beta: float) -> tuple[Tensor | None, float]:
    if not math.isfinite(tau):
        raise ValueError(f"tau must be finite, got {tau!r}")
    return _costs(values, costs)[0], _check_beta(beta)


@torch.no_grad()
def soft_mask(values: Tensor, costs: Tensor | None, tau: float, beta: float,
              out: Tensor | None = None) -> Tensor:
    """sigmoid(beta (v / c - tau)) without autograd, in float32 (float64 for float64 values),
    into out if given: the arithmetic `solve_threshold` evaluates, so sum(c m) meets its
    budget to the solve's tolerance (a plain sigmoid(beta * (v - tau)) rounds tau to float32,
    which can cost ~1e-4 of the budget when beta * tau is large)."""
    c, beta = _mask_args(values, costs, tau, beta)
    if out is not None and (out.shape != values.shape or out.dtype != _work(values.dtype)):
        raise ValueError(f"out must be a {_work(values.dtype)} tensor of shape "
                         f"{tuple(values.shape)}")
    with _no_autocast(values):
        return _mask(values.detach(), c, beta, beta * float(tau), out)


def soft_mask_from_tau(values: Tensor, costs: Tensor | None, tau: float, beta: float) -> Tensor:
    """m = sigmoid(beta (v / c - tau)) with the implicit gradient of DESIGN.md: tau is taken as
    the root for the budget sum(c m) (from `solve_threshold`), which the backward holds fixed."""
    c, beta = _mask_args(values, costs, tau, beta)
    with _no_autocast(values):
        out: Tensor = _SoftMask.apply(values, c, float(tau), beta, None)
    return out


def soft_topk(values: Tensor, costs: Tensor | None, budget: float, beta: float) -> Tensor:
    """Soft mask m in [0, 1] with sum(costs * m) == budget (1e-5 relative in float32, 1e-11 in
    float64; float16/bfloat16 are computed in float32). Differentiable in values, not costs."""
    tau, m, c = _solve(values, costs, budget, beta, None, True)
    with _no_autocast(values):
        out: Tensor = _SoftMask.apply(values, c, tau, _check_beta(beta), m)
    return out
