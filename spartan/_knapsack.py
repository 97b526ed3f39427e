"""The hard mask of Spartan: the fractional knapsack on values / costs, without a full sort.

Keeps the longest prefix of the items by ratio (ties: lower index first) whose costs fit the
budget. A bracket [lo, hi] of the threshold comes from a sample (drawn in proportion to cost
for weighted costs, so that plain quantiles apply), one exact pass keeps the items inside it and
counts the cost above it, and the same runs on the items kept, down to a selection (unit costs)
or a sort of at most SORT_MAX items; a missed bracket is widened, then a full sort decides.
Costs are summed in float64: float32 sums drift by ~1e-7 relative, too coarse to decide a
knapsack over millions of items.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor

from spartan._chunked import (
    buffer,
    check_finite,
    costs_entry,
    gather,
    generator,
    part,
    ratio,
    ratio_into,
    sample,
    spans,
    split_scalar,
    sum64,
    validate,
    work_dtype,
)

log = logging.getLogger(__name__)

SAMPLE = 1 << 14  # sampled items to bracket the threshold
SORT_MAX = 1 << 11  # at most this many items: a plain sort (torch sorts these fast)
SELECT_MAX = 1 << 16  # at most this many items of unit cost: a kthvalue


def _select_cut(x: Tensor, budget: float) -> tuple[float, int]:
    """(t, q) for unit costs by selection: keep x > t and the first q items with x == t."""
    check_finite(*torch.stack(torch.aminmax(x)).tolist())
    j = min(int(math.floor(budget)), x.numel() - 1)  # items kept
    t = float(torch.kthvalue(x, x.numel() - j).values)  # the (j + 1)-th largest
    return t, j - int(torch.count_nonzero(x > t))


def sorted_cut(x: Tensor, c: Tensor | None, budget: float) -> tuple[float, int]:
    """(t, q): keep x > t and the first q items (by index) with x == t. Plain stable sort."""
    xs, order = torch.sort(x, descending=True, stable=True)
    check_finite(*xs[[-1, 0]].tolist())  # NaN sorts first
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
    s = SAMPLE
    jitter = torch.rand(s, generator=generator(c.device), dtype=torch.float64, device=c.device)
    pos = (torch.arange(s, dtype=torch.float64, device=c.device) + jitter) * (total / s)
    b64, found, offset = buffer(c.numel(), torch.float64, c.device)[0], [], 0.0
    for a, b in spans(c.numel(), c.device):
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
    mid = split_scalar(0.5 * (lo + hi), ws.dtype)[0] if both else 0.0
    half = max(hi - mid, mid - lo) if both else 0.0
    exact = c is None and v.device.type == "cpu"  # a chunk's count of signs stays below 2**24
    b64 = buffer(v.numel(), torch.float64, v.device)[0]
    flags = torch.empty(ws.shape[1], dtype=torch.bool, device=v.device)
    probes, signs, found = [], [], []
    for a, b in spans(v.numel(), v.device):
        x = ratio_into(v[a:b], part(div, a, b), ws[0, :b - a])
        if both:
            d = torch.sub(x, mid, out=ws[0, :b - a])
            probes.append(d.sum())
            sg = torch.sign(d, out=ws[1, :b - a])
            signs.append(sg.sum() if exact else sum64(sg if c is None else sg.mul_(c[a:b]), b64))
            inside = flags[:b - a].copy_(d.abs_().sub_(half).clamp_max_(0.0))  # nonzero: inside
        else:
            probes.append(x.sum())
            inside = torch.ge(x, lo) if math.isfinite(lo) else torch.le(x, hi)
        found.append(torch.nonzero(inside).squeeze(1).add_(a))
    if not math.isfinite(float(torch.stack(probes).sum())):  # NaN or inf, or a huge overflow
        for a, b in spans(v.numel(), v.device):
            x = ratio_into(v[a:b], part(div, a, b), ws[0, :b - a])
            check_finite(*torch.stack(torch.aminmax(x)).tolist())
    idx = torch.cat(found)
    cc = gather(c, idx)
    xc = ratio(v[idx], cc if div is c else gather(div, idx))
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
    if c is None and n <= SELECT_MAX:
        return _select_cut(ratio(v, div), budget)
    if n <= SORT_MAX:
        return sorted_cut(ratio(v, div), c, budget)
    dtype = work_dtype(v.dtype)
    ws = buffer(n, dtype, v.device, 2)
    for attempt in range(3):
        plain = c is None or pps is not None
        idx = pps if pps is not None else sample(n, SAMPLE if plain else SORT_MAX, v.device)
        xs = ratio(v[idx], gather(div, idx))
        lo, hi = _bracket(xs, None if plain else gather(c, idx), budget / total, 4.0 ** attempt)
        above, xc, cc, inside = _pass(v, div, c, lo, hi, total, ws)
        if above <= budget < above + inside and xc.numel() < n:
            return _cut(xc, None, cc, budget - above, inside)
    log.debug("hard top-k bracket missed three times; sorting %d items", n)
    return sorted_cut(ratio(v, div), c, budget)


@torch.no_grad()
def hard_threshold(values: Tensor, costs: Tensor | None, budget: float) -> Tensor:
    """Bool mask of the longest prefix of the items, by v / c descending and index ascending on
    ties, whose total cost fits in budget: the fractional knapsack without its fractional item.
    Never over budget (costs summed in float64). Same as `hard_topk`."""
    c, total = validate(values, costs, budget)
    v, n = values.detach(), values.numel()
    pps = None
    if c is not None and costs is not None and n > SELECT_MAX:
        entry = costs_entry(costs, c.dtype)
        if entry[3] is None:
            entry[3] = _pps(c, total)
        pps = entry[3]
    t, q = _cut(v, c, c, float(budget), total, pps)
    ws = buffer(n, work_dtype(v.dtype), v.device)[0]
    keep = torch.empty(n, dtype=torch.bool, device=v.device)
    for a, b in spans(n, v.device):  # x > t, made in float (see _pass)
        keep[a:b].copy_(torch.sub(ratio_into(v[a:b], part(c, a, b), ws[:b - a]), t).clamp_min_(0.0))
    for a, b in spans(n, v.device):  # ties at t: the first q by index
        if q <= 0:
            break
        tied = torch.nonzero(ratio_into(v[a:b], part(c, a, b), ws[:b - a]) == t).squeeze(1)[:q]
        keep[tied + a] = True
        q -= tied.numel()
    return keep


def hard_topk(values: Tensor, costs: Tensor | None, budget: float) -> Tensor:
    """The items with the largest values / costs whose costs fit in the budget (DESIGN.md)."""
    return hard_threshold(values, costs, budget)
