"""Per layer, dense or sparse: the allocation under a piecewise (capped) latency cost.

A fitted weights layer costs intercept + slope x kept blocks below its crossover and its dense
latency D above it (the export keeps the dense kernel where the sparse one is slower:
costmodels.fit.piecewise). The Sparsifier's soft top-k needs one linear cost per block, so the
cap cannot enter it directly. Instead each layer gets two options before training:
- "sparse": masked, each block charged the line's slope (its intercept is fixed);
- "dense": not masked, all weights kept, charged D (fixed).
The choice is a greedy search over layers made dense, scored by the value the model keeps (the
same |w| block values the Sparsifier ranks): a dense layer keeps all its value for D; the
sparse layers share what is left of the budget as the allocation would share it (one
knapsack by value / cost for "global", the same kept fraction per layer otherwise). A layer is
made dense when that raises the kept value, so a layer whose line at its share would sit above
D (dense is both cheaper and keeps more) is always dense, and one whose dense premium buys more
value elsewhere stays sparse; no choice may leave the masked layers under MIN_SPARSE of their
line cost (the |w| proxy would starve a small layer to keep a large one whole). Each layer's
values are sketched as at most SKETCH chunks of equal-valued blocks (sorted), so one score
costs O(layers x SKETCH), whatever the model size. The choice is made once, at planning, on
the starting weights (random or pretrained); the Sparsifier then masks the sparse layers only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from spartan_service.costmodels.bridge import CostSplit, layer_key
from spartan_service.costmodels.schema import CostLayer

log = logging.getLogger("spartan_service.costmodels.dense_choice")
SKETCH = 256
# A dense choice must leave the masked layers at least this fraction of their line cost: the
# |w| value does not see that a layer left with (nearly) no weights breaks the model.
MIN_SPARSE = 0.05


@dataclass(frozen=True)
class _Option:
    name: str  # parameter name
    extra: float  # D - intercept: what making the layer dense adds to the fixed cost
    slope: float  # cost of one block on the line
    blocks: int
    value: float  # all of the layer's block value
    counts: Tensor  # sketch: blocks per chunk, chunks by falling value
    sums: Tensor  # sketch: value per chunk


def _sketch(values: Tensor) -> tuple[Tensor, Tensor]:
    v = values.reshape(-1).double().sort(descending=True).values
    edges = torch.linspace(0, v.numel(), min(SKETCH, v.numel()) + 1).round().long()
    csum = torch.cat([v.new_zeros(1), v.cumsum(0)])
    return (edges[1:] - edges[:-1]).double(), csum[edges[1:]] - csum[edges[:-1]]


def _layer(split: CostSplit, pname: str) -> CostLayer:
    key = layer_key(split.cost_model, pname)
    assert key is not None  # split_costs refused weights the cost model lacks
    return split.cost_model.layers[key]


def _options(split: CostSplit, model: nn.Module) -> list[_Option]:
    from spartan.layout import block_values, plain_name

    params = {plain_name(n): p for n, p in model.named_parameters()}
    out = []
    for pname, cost in split.costs.items():
        lay = _layer(split, pname)
        dense = (lay.model_extra or {}).get("dense_latency")
        p = params[pname]
        grid = tuple(cost.shape)
        block = (p.shape[0] // grid[0], p.shape[1] // grid[1])
        counts, sums = _sketch(block_values(p.detach(), block))
        slope = float(cost.reshape(-1)[0])
        extra = float(dense) - lay.intercept if isinstance(dense, (int, float)) else float("inf")
        out.append(_Option(pname, extra, slope, cost.numel(), float(sums.sum()), counts, sums))
    return out


def _kept_value(sparse: Sequence[_Option], budget: float, allocation: str) -> float:
    """Value kept by the sparse layers with `budget` of line cost, as the allocation shares it."""
    total = sum(o.slope * o.blocks for o in sparse)
    if budget >= total:
        return sum(o.value for o in sparse)
    if allocation == "global":  # fractional knapsack over chunks by value / cost
        sums = torch.cat([o.sums for o in sparse])
        costs = torch.cat([o.counts * o.slope for o in sparse])
        order = (sums / costs).argsort(descending=True)
        spent = costs[order].cumsum(0)
        full = int(torch.searchsorted(spent, torch.tensor(budget, dtype=spent.dtype),
                                      right=True))
        kept = float(sums[order][:full].sum())
        if full < len(order):
            left = budget - (float(spent[full - 1]) if full else 0.0)
            kept += float(sums[order][full]) * left / float(costs[order][full])
        return kept
    fraction = budget / total  # the same kept fraction of every layer
    kept = 0.0
    for o in sparse:
        take = fraction * o.blocks
        csum = o.counts.cumsum(0)
        full = int(torch.searchsorted(csum, torch.tensor(take, dtype=csum.dtype), right=True))
        kept += float(o.sums[:full].sum())
        if full < len(o.counts):
            left = take - (float(csum[full - 1]) if full else 0.0)
            kept += float(o.sums[full]) * left / float(o.counts[full])
    return kept


def _score(options: Sequence[_Option], dense: set[str], budget: float,
           allocation: str) -> float | None:
    """Kept value with `dense` layers dense and `budget` (fixed part removed) for the lines;
    None when no layer is left to mask or the masked ones get under MIN_SPARSE of their cost."""
    sparse = [o for o in options if o.name not in dense]
    left = budget - sum(o.extra for o in options if o.name in dense)
    if not sparse or left < MIN_SPARSE * sum(o.slope * o.blocks for o in sparse):
        return None
    return sum(o.value for o in options if o.name in dense) + _kept_value(sparse, left,
                                                                          allocation)


def choose_dense(split: CostSplit, model: nn.Module, target: float,
                 allocation: str = "global") -> tuple[str, ...]:
    """Parameter names best left dense (module doc) at a budget of `target` (in the cost
    model's unit, fixed part included)."""
    options = _options(split, model)
    candidates = [o.name for o in options if o.extra < o.slope * o.blocks]  # cap below line
    budget = target - split.fixed
    dense: set[str] = set()
    best = _score(options, dense, budget, allocation)
    while best is not None:
        scored = [(s, name) for name in candidates if name not in dense
                  if (s := _score(options, dense | {name}, budget, allocation)) is not None]
        if not scored:
            break
        score, name = max(scored)
        if score <= best * (1 + 1e-9):
            break
        dense.add(name)
        best = score
    return tuple(o.name for o in options if o.name in dense)


def with_dense(split: CostSplit, dense: Sequence[str]) -> CostSplit:
    """The split with `dense` layers unmasked: their dense latency moves into the fixed part
    (replacing their intercepts), their blocks leave the variable part."""
    if not dense:
        return split
    extra = 0.0
    for pname in dense:
        lay = _layer(split, pname)
        extra += float((lay.model_extra or {})["dense_latency"]) - lay.intercept
    costs = {n: c for n, c in split.costs.items() if n not in set(dense)}
    variable = float(sum(float(c.sum(dtype=torch.float64)) for c in costs.values()))
    return replace(split, costs=costs, fixed=split.fixed + extra, variable=variable,
                   dense_layers=tuple(dense))


def piecewise_split(split: CostSplit, model: nn.Module, budget: float, unit: str = "fraction",
                    allocation: str = "global") -> tuple[CostSplit, float, float]:
    """(split, fraction, target): the split with the layers best left dense unmasked, the
    Sparsifier's budget fraction of the rest, and the target cost, for "at most `budget`" (in
    `unit`, as CostSplit.fraction, but between the piecewise floor and dense cost:
    CostSplit.capped). ValueError as there, or when the target leaves the masked layers
    nothing."""
    from spartan_service.costmodels.bridge import fraction_of_variable

    floor, dense = split.capped()
    what = "overhead, intercepts (or dense latencies where lower) and layers left dense"
    f = fraction_of_variable(split.cost_model.unit, floor, dense - floor, budget, unit, what)
    target = floor + f * (dense - floor)
    if allocation in ("global", "uniform", "erk"):  # N:M: the pattern fixes the density
        chosen = with_dense(split, choose_dense(split, model, target, allocation))
    else:
        chosen = split
    if chosen.dense_layers:
        log.info("layers kept dense (their dense latency is the better buy): %s",
                 ", ".join(chosen.dense_layers))
    fraction = (target - chosen.fixed) / chosen.variable
    if fraction <= 0:
        unit_name = split.cost_model.unit
        raise ValueError(f"budget {target:.6g} {unit_name} leaves nothing for the masked layers: "
                         f"their intercepts and the layers best left dense cost "
                         f"{chosen.fixed:.6g} {unit_name}")
    return chosen, min(1.0, fraction), target
