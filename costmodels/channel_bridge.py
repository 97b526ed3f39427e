"""From a structured cost model and a model to the channel Sparsifier's costs and budget.

A structured cost model (costmodels.fit_channels; or the built-in params / FLOPs ones of
spartan.channel_costs) has, per layer (module name), latency = intercept + slope x pairs +
slope_out x kept_out + slope_in x kept_in. The Sparsifier takes those coefficients as its
`costs` and keeps `budget` of the variable part (everything but the intercepts). So, as for
weights (spartan_service.costmodels.bridge):

    fixed    = overhead + intercepts of the prunable layers + full cost of cost-model
               layers that cannot shrink,
    variable = the prunable layers' variable cost at full width;

"at most X of dense" is a target of X x (fixed + variable), "at most T ms" a target of T, and
the Sparsifier's budget is (target - fixed) / variable, refused (ValueError) at or below the
fixed part or above the dense cost.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from spartan_service.costmodels.bridge import fraction_of_variable
from spartan_service.costmodels.schema import TIME_UNITS, CostModel, validate_cost_model


def _cm(cost_model: Mapping[str, Any] | CostModel) -> CostModel:
    return validate_cost_model(cost_model if isinstance(cost_model, CostModel)
                               else dict(cost_model))


def _graph(model: nn.Module, example_inputs: Any) -> Any:
    from spartan.channels import trace_channels

    return trace_channels(model, example_inputs)


def channel_costs(cost_model: Mapping[str, Any] | CostModel, model: nn.Module,
                  example_inputs: Any, graph: Any = None) -> dict[str, dict[str, float]]:
    """Per-layer coefficients for `Sparsifier(..., costs=...)` with structure="channels".
    ValueError names the prunable layers the cost model lacks, layers fitted for another
    shape, and a cost model fitted for weight sparsity."""
    cm = _cm(cost_model)
    g = graph if graph is not None else _graph(model, example_inputs)
    missing = sorted(set(g.layers) - set(cm.layers))
    if missing:
        raise ValueError(f"the cost model has no cost for prunable layer(s) {', '.join(missing)}"
                         f" (cost-model layers: {', '.join(cm.layers)})")
    out = {}
    for name, lay in g.layers.items():
        c = cm.layers[name]
        if cm.unit in TIME_UNITS and c.structure != "channels":
            raise ValueError(f"cost-model layer {name!r} was fitted for weight sparsity "
                             "(latency per nonzero block); profile with structure 'channels'")
        shape = list(lay.weight.shape)
        if c.shape is not None and list(c.shape) != shape:
            raise ValueError(f"cost-model layer {name!r} was fitted for shape {c.shape}, the "
                             f"model's weight is {shape}")
        out[name] = {"intercept": c.intercept, "slope": c.slope,
                     "slope_out": c.slope_out or 0.0, "slope_in": c.slope_in or 0.0}
    return out


def channel_cost_split(cost_model: Mapping[str, Any] | CostModel, model: nn.Module,
                       example_inputs: Any, graph: Any = None) -> tuple[float, float]:
    """(fixed, variable) parts of the model's dense cost (module doc)."""
    from spartan.channel_costs import LayerCost, dense_costs

    cm = _cm(cost_model)
    g = graph if graph is not None else _graph(model, example_inputs)
    costs = channel_costs(cm, model, example_inputs, graph=g)
    variable = sum(dense_costs(g, {n: LayerCost.from_dict(n, c) for n, c in costs.items()}
                               ).values())
    fixed = (cm.overhead or 0.0) + sum(c["intercept"] for c in costs.values())
    for name, lay in cm.layers.items():
        if name not in g.layers:  # profiled, but no channel of it can go
            full = (lay.model_extra or {}).get("full")
            if full is None:
                raise ValueError(f"cost-model layer {name!r} is not a prunable layer of the "
                                 "model and has no full widths")
            from spartan_service.costmodels.fit_channels import layer_latency

            fixed += layer_latency(lay.model_dump(), float(full[0]), float(full[1]))
    return fixed, variable


def channel_budget_fraction(cost_model: Mapping[str, Any] | CostModel, model: nn.Module,
                            example_inputs: Any, budget: float, unit: str = "fraction",
                            graph: Any = None) -> float:
    """The Sparsifier's budget for "at most `budget` of dense" (unit "fraction") or "at most
    `budget` ms" (or us, s, or the cost model's own unit)."""
    cm = _cm(cost_model)
    fixed, variable = channel_cost_split(cm, model, example_inputs, graph=graph)
    return fraction_of_variable(cm.unit, fixed, variable, budget, unit,
                                "overhead and intercepts")
