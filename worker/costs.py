"""What each block of a job's model costs, and the budget as the Sparsifier's fraction.

- params: one per weight (the Sparsifier's default); sparsity.budget is the density of the
  masked weights.
- flops: multiply-adds of each block at the dataset's input size (costmodels.builtin);
  sparsity.budget is the kept fraction of the masked layers' FLOPs.
- fitted: a stored latency model (per layer, latency = intercept + slope x nonzero blocks).
  sparsity.budget means "at most this fraction of the dense model's latency", or
  cost_model.budget_ms an absolute latency; costmodels.bridge turns either into the
  Sparsifier's fraction, counting intercepts, overhead and unmasked layers as fixed cost.

With sparsity.structure "channels" the same three kinds are per-layer functions of the kept
widths (spartan.channel_costs; costmodels.channel_bridge): params and FLOPs built in, fitted
from a structured profile; the Sparsifier takes the per-layer coefficients.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from costmodels.schema import CostModel
from jobs.spec import JobSpec
from jobs.store import JobStore


@dataclass(frozen=True)
class CostPlan:
    kind: str
    unit: str
    budget_fraction: float  # the Sparsifier's budget: kept fraction of the masked cost
    costs: dict[str, Any] | None = None  # per-block costs (channels: per-layer coefficients);
    # None = one per weight (channels: parameters)
    fixed: float = 0.0  # cost no mask removes, in `unit`
    budget: float | None = None  # the budget in `unit`, when the spec fixes it
    model: CostModel | None = field(default=None, repr=False)  # validated once
    structure: str = "weights"

    def budget_cost(self, variable_total: float) -> float:
        """The budget in `unit`, given the masked layers' total (variable) cost."""
        if self.budget is not None:
            return self.budget
        return self.fixed + self.budget_fraction * variable_total

    def predicted(self, model: nn.Module, kept_cost: float) -> float:
        """Predicted cost of the finalized model, in `unit` (channels: the Sparsifier's exact
        cost of the kept widths)."""
        if self.model is None or self.structure == "channels":
            return self.fixed + kept_cost
        from costmodels import bridge

        return float(bridge.predict_cost(self.model, model))


def plan_costs(spec: JobSpec, model: nn.Module, example_input: Tensor, store: JobStore,
               tenant: str | None) -> CostPlan:
    """Costs and budget fraction for `spec` on `model` (on its training device); the cost
    model is validated and the block costs computed here, once per job."""
    kind, s = spec.cost_model.kind, spec.sparsity
    dense = s.method == "dense"
    if s.structure == "channels":
        return _channel_costs(spec, model, example_input, store, tenant)
    if kind == "params":
        return CostPlan(kind, "params", 1.0 if dense else s.budget)
    from costmodels import bridge, builtin

    block = (s.block[0], s.block[1])
    prefixes = list(s.prefixes) if s.prefixes else None
    if kind == "flops":
        was_training = model.training
        model.eval()  # the probe forward must not update batch-norm statistics
        try:
            cost_model = builtin.flops_cost_model(model, example_input, block)
        finally:
            model.train(was_training)
    else:
        row = store.get_cost_model(spec.cost_model.id or "", tenant=tenant)
        if row is None:
            raise ValueError(f"cost model '{spec.cost_model.id}' not found")
        cost_model = row.data
    split = bridge.split_costs(cost_model, model, block, prefixes=prefixes)
    budget_ms = spec.cost_model.budget_ms
    budget: float | None
    if dense:
        fraction, budget = 1.0, budget_ms
    elif budget_ms is not None:
        fraction, budget = split.fraction(budget_ms, unit="ms"), budget_ms
    elif kind == "fitted":
        fraction, budget = split.fraction(s.budget, unit="fraction"), s.budget * split.dense
    else:
        fraction, budget = s.budget, None
    return CostPlan(kind, split.cost_model.unit, float(fraction), costs=split.costs,
                    fixed=split.fixed, budget=budget, model=split.cost_model)


def _channel_costs(spec: JobSpec, model: nn.Module, example: Tensor, store: JobStore,
                   tenant: str | None) -> CostPlan:
    from costmodels import builtin, channel_bridge
    from costmodels.schema import validate_cost_model
    from spartan.channels import trace_channels

    kind, s = spec.cost_model.kind, spec.sparsity
    dense = s.method == "dense"
    if kind == "params" and spec.cost_model.budget_ms is None:
        cost_model: Any = builtin.channel_cost_model(model, example, "params")
    elif kind == "flops":
        cost_model = builtin.channel_cost_model(model, example, "flops")
    else:
        row = store.get_cost_model(spec.cost_model.id or "", tenant=tenant)
        if row is None:
            raise ValueError(f"cost model '{spec.cost_model.id}' not found")
        cost_model = row.data
    was_training = model.training
    try:
        graph = trace_channels(model, example)
    finally:
        model.train(was_training)
    costs = channel_bridge.channel_costs(cost_model, model, example, graph=graph)
    fixed, variable = channel_bridge.channel_cost_split(cost_model, model, example, graph=graph)
    cm = validate_cost_model(dict(cost_model))
    budget_ms = spec.cost_model.budget_ms
    budget: float | None
    if dense:
        fraction, budget = 1.0, budget_ms
    elif budget_ms is not None:
        fraction = channel_bridge.channel_budget_fraction(cm, model, example, budget_ms, "ms",
                                                          graph=graph)
        budget = budget_ms
    elif kind == "fitted":
        fraction = channel_bridge.channel_budget_fraction(cm, model, example, s.budget,
                                                          graph=graph)
        budget = s.budget * (fixed + variable)
    else:
        fraction, budget = s.budget, None
    return CostPlan(kind, cm.unit, float(fraction), costs=costs, fixed=fixed, budget=budget,
                    model=cm, structure="channels")
