"""From a cost model and a model to the Sparsifier's `costs=` and `budget`.

Names: a cost-model layer matches a weight by its module name ("fc1" for "fc1.weight") or by
the full parameter name ("fc1.weight", "attn.in_proj_weight").

Block sizes: a layer fitted with blocks of R0 x C0 has slope s0 per block, i.e. s0 / (R0 C0)
per weight (a conv block's kernel extent is the same at every block size and cancels); at the
Sparsifier's block R x C each block costs s0 x (R C) / (R0 C0). Where R x C does not divide a
weight, the Sparsifier falls back to 1x1 blocks there, and so do these costs. Rescaling
assumes latency proportional to nonzero weights; profile at the block size you train with to
capture block-kernel effects.

Zero slopes (layers a deployment runs dense, where sparsity buys nothing) become a tiny
positive cost, 1e-6 of the largest slope, since the Sparsifier needs costs > 0: their blocks
have a huge value / cost and are kept, at no budget.

Budget: the model's predicted cost is fixed + variable, where
    fixed = overhead + intercepts of the masked layers + full cost (intercept + slope x all
            blocks, capped at the layer's dense latency: fit.piecewise) of cost-model layers
            left dense (not maskable, outside `prefixes`, or chosen dense by
            costmodels.dense_choice, which handles the cap in the allocation),
    variable = sum over masked layers of slope x blocks (the `block_costs` total).
"At most X of dense" means a target of X x (fixed + variable); "at most T ms" a target of T.
The Sparsifier's budget fraction is (target - fixed) / variable, refused (ValueError) when the
target is at or below the fixed part or above the dense cost.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from spartan_service.costmodels.fit import piecewise
from spartan_service.costmodels.profiler import layer_name
from spartan_service.costmodels.schema import TIME_UNITS, CostLayer, CostModel, validate_cost_model

ZERO_SLOPE_FLOOR = 1e-6


def _model(cost_model: Mapping[str, Any] | CostModel) -> CostModel:
    """Validated once: a CostModel passes through as it is."""
    if isinstance(cost_model, CostModel):
        return cost_model
    return validate_cost_model(dict(cost_model))


def layer_key(cm: CostModel, pname: str) -> str | None:
    """The cost-model layer that costs parameter `pname` (module doc), or None."""
    for key in (layer_name(pname), pname):
        if key in cm.layers:
            return key
    return None


def _find_weight(model: nn.Module, key: str) -> Tensor | None:
    """The weight a cost-model layer names ("fc1" -> fc1.weight, or a parameter path), as the
    module computes it (the masked weight while a Sparsifier is attached)."""
    for path in (key + ".weight", key):
        mpath, _, attr = path.rpartition(".")
        try:
            module = model.get_submodule(mpath) if mpath else model
        except AttributeError:
            continue
        value = getattr(module, attr, None)
        if isinstance(value, Tensor) and value.dim() >= 2:
            return value
    return None


def _check_shape(key: str, lay: CostLayer, p: Tensor) -> None:
    if lay.shape is not None and list(lay.shape) != list(p.shape):
        raise ValueError(f"cost-model layer {key!r} was fitted for shape {lay.shape}, the "
                         f"model's weight is {list(p.shape)}")


def block_costs(cost_model: Mapping[str, Any] | CostModel, model: nn.Module,
                block: tuple[int, int] = (1, 1), prefixes: Iterable[str] | None = None
                ) -> dict[str, Tensor]:
    """Per-block costs for `Sparsifier(model, config, total_steps, costs=...)`: full parameter
    name -> float32 tensor of shape block_grid(weight.shape, block) (1x1 grid where the block
    does not divide), every entry the layer's slope rescaled to the block (module doc).
    ValueError names the maskable weights the cost model lacks."""
    from spartan.layout import block_grid, check_block, maskable_weights

    cm, block = _model(cost_model), check_block(block)
    params = maskable_weights(model, prefixes)
    missing = [p for p in params if layer_key(cm, p) is None]
    if missing:
        raise ValueError(f"the cost model has no cost for maskable layer(s) "
                         f"{', '.join(missing)} (cost-model layers: {', '.join(cm.layers)})")
    slopes: dict[str, tuple[float, tuple[int, int]]] = {}
    for pname, p in params.items():
        key = layer_key(cm, pname)
        assert key is not None
        lay = cm.layers[key]
        _check_shape(key, lay, p)
        used = block if block_grid(p.shape, block) is not None else (1, 1)
        slopes[pname] = (lay.slope * used[0] * used[1] / (lay.block[0] * lay.block[1]), used)
    top = max(s for s, _ in slopes.values())
    if top <= 0:
        raise ValueError("every maskable layer has slope 0 in this cost model (dense kernels "
                         "throughout?): sparsity does not change its cost")
    out = {}
    for pname, (slope, used) in slopes.items():
        p = params[pname]
        grid = block_grid(p.shape, used)
        assert grid is not None
        out[pname] = torch.full(grid, max(slope, ZERO_SLOPE_FLOOR * top), dtype=torch.float32,
                                device=p.device)
    return out


def _dense_layers_cost(cm: CostModel, model: nn.Module, masked: Iterable[str]) -> float:
    """Full cost of the cost-model layers that are not masked (left dense)."""
    from spartan.layout import block_grid, plain_name

    params = {plain_name(n): p for n, p in model.named_parameters()}
    used = {layer_key(cm, p) for p in masked}
    total = 0.0
    for key, lay in cm.layers.items():
        if key in used:
            continue
        p = params.get(key + ".weight", params.get(key))
        if p is None:
            raise ValueError(f"cost-model layer {key!r} is not a weight of the model")
        _check_shape(key, lay, p)
        grid = block_grid(p.shape, lay.block)
        if grid is None:
            raise ValueError(f"cost-model layer {key!r}: block {list(lay.block)} does not "
                             f"divide {list(p.shape)}")
        total += piecewise(lay, grid[0] * grid[1])
    return total


@dataclass(frozen=True)
class CostSplit:
    """A model's costs under one cost model, computed once per job: the per-block costs for the
    Sparsifier and the (fixed, variable) parts of the dense cost (module doc)."""

    cost_model: CostModel
    costs: dict[str, Tensor]
    fixed: float
    variable: float
    dense_layers: tuple[str, ...] = ()  # maskable weights left dense (costmodels.dense_choice)

    @property
    def dense(self) -> float:
        return self.fixed + self.variable

    def capped(self) -> tuple[float, float]:
        """(floor, dense) under the piecewise cost (fit.piecewise): the lowest cost any masks
        reach (a masked layer costs min(intercept, dense latency) with nothing kept) and the
        dense model's cost (each masked layer min(line at all blocks, dense latency))."""
        floor = dense = self.fixed
        for pname, c in self.costs.items():
            key = layer_key(self.cost_model, pname)
            assert key is not None
            lay = self.cost_model.layers[key]
            line = float(c.sum(dtype=torch.float64))
            cap = (lay.model_extra or {}).get("dense_latency")
            if isinstance(cap, (int, float)):  # the intercepts are in self.fixed
                floor += min(0.0, float(cap) - lay.intercept)
                dense += min(line, float(cap) - lay.intercept)
            else:
                dense += line
        return floor, dense

    def fraction(self, budget: float, unit: str = "fraction") -> float:
        """The Sparsifier's `budget` (fraction of the total maskable cost) for "at most `budget`
        of the dense cost" (unit="fraction") or "at most `budget` ms" (unit "ms", "us" or "s";
        or the cost model's own unit, e.g. "flops")."""
        return fraction_of_variable(self.cost_model.unit, self.fixed, self.variable, budget,
                                    unit, "overhead, intercepts and layers left dense")


def fraction_of_variable(cm_unit: str, fixed: float, variable: float, budget: float,
                         unit: str, fixed_is: str) -> float:
    """The fraction of the variable cost a budget leaves: `budget` of dense (unit "fraction")
    or an absolute cost (ms, us, s, or the cost model's own unit). `fixed_is` says what the
    fixed cost holds, for the error when the budget does not exceed it."""
    dense = fixed + variable
    if unit == "fraction":
        if not 0 < budget <= 1:
            raise ValueError(f"a fractional budget must lie in (0, 1], got {budget}")
        target = budget * dense
    elif unit in TIME_UNITS:
        if cm_unit not in TIME_UNITS:
            raise ValueError(f"a budget in {unit} needs a latency cost model, this one is "
                             f"in {cm_unit}")
        target = budget * TIME_UNITS[unit]
    elif unit == cm_unit:
        target = budget
    else:
        raise ValueError(f"unknown budget unit {unit!r}; use fraction, ms, us, s or {cm_unit}")
    shown = f"{target:.6g} {cm_unit}"
    if target <= fixed:
        raise ValueError(f"budget {shown} is not above the fixed cost {fixed:.6g} {cm_unit} "
                         f"({fixed_is}), which no sparsity removes")
    if target > dense * (1 + 1e-9):
        raise ValueError(f"budget {shown} is above the dense model's cost {dense:.6g} "
                         f"{cm_unit}: nothing to prune for")
    return min(1.0, (target - fixed) / variable)

def split_costs(cost_model: Mapping[str, Any] | CostModel, model: nn.Module,
                block: tuple[int, int] = (1, 1), prefixes: Iterable[str] | None = None
                ) -> CostSplit:
    """Validate the cost model and compute the block costs once; see CostSplit."""
    cm = _model(cost_model)
    costs = block_costs(cm, model, block, prefixes)
    intercepts = sum(cm.layers[k].intercept for k in {layer_key(cm, p) for p in costs} if k)
    fixed = (cm.overhead or 0.0) + intercepts + _dense_layers_cost(cm, model, costs)
    variable = float(sum(float(c.sum(dtype=torch.float64)) for c in costs.values()))
    return CostSplit(cm, costs, fixed, variable)


def cost_split(cost_model: Mapping[str, Any] | CostModel, model: nn.Module,
               block: tuple[int, int] = (1, 1), prefixes: Iterable[str] | None = None
               ) -> tuple[float, float]:
    """(fixed, variable) parts of the model's dense cost, as in the module doc."""
    split = split_costs(cost_model, model, block, prefixes)
    return split.fixed, split.variable


def budget_fraction(cost_model: Mapping[str, Any] | CostModel, model: nn.Module,
                    block: tuple[int, int] = (1, 1), budget: float = 0.5,
                    unit: str = "fraction", prefixes: Iterable[str] | None = None) -> float:
    """The Sparsifier's `budget` for a budget in `unit` (CostSplit.fraction)."""
    return split_costs(cost_model, model, block, prefixes).fraction(budget, unit)


def predict_cost(cost_model: Mapping[str, Any] | CostModel, model: nn.Module) -> float:
    """Predicted cost of the model's current weights (masked ones while a Sparsifier is
    attached): overhead + for each cost-model layer intercept + slope x its nonzero blocks
    (blocks of the layer's cost-model block), at most the layer's dense latency where the
    profile measured it (spartan_service.costmodels.fit.piecewise: the export runs dense there)."""
    from spartan.layout import block_values

    cm = _model(cost_model)
    total = cm.overhead or 0.0
    with torch.no_grad():
        weights = {key: _find_weight(model, key) for key in cm.layers}
    for key, lay in cm.layers.items():
        p = weights[key]
        if p is None:
            raise ValueError(f"cost-model layer {key!r} is not a weight of the model")
        _check_shape(key, lay, p)
        nnz = int((block_values(p.detach(), lay.block) > 0).sum())
        total += piecewise(lay, nnz)
    return total
