"""What each block of a job's model costs, and the budget as the Sparsifier's fraction.

- params: one per weight (the Sparsifier's default); sparsity.budget is the density of the
  masked weights.
- flops: multiply-adds of each block at the dataset's input size (costmodels.builtin);
  sparsity.budget is the kept fraction of the masked layers' FLOPs.
- fitted: a stored latency model (per layer, latency = intercept + slope x nonzero blocks).
  sparsity.budget means "at most this fraction of the dense model's latency", or
  cost_model.budget_ms an absolute latency; costmodels.bridge turns either into the
  Sparsifier's fraction, counting intercepts, overhead and unmasked layers as fixed cost.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from costmodels.schema import CostModel
from jobs.spec import JobSpec
from jobs.store import JobStore


@dataclass(frozen=True)
class CostPlan:
    kind: str
    unit: str
    budget_fraction: float  # the Sparsifier's budget: kept fraction of the masked cost
    costs: dict[str, Tensor] | None = None  # per-block costs; None = one per weight
    fixed: float = 0.0  # cost no mask removes, in `unit`
    budget: float | None = None  # the budget in `unit`, when the spec fixes it
    model: CostModel | None = field(default=None, repr=False)  # validated once

    def budget_cost(self, variable_total: float) -> float:
        """The budget in `unit`, given the masked layers' total (variable) cost."""
        if self.budget is not None:
            return self.budget
        return self.fixed + self.budget_fraction * variable_total

    def predicted(self, model: nn.Module, kept_cost: float) -> float:
        """Predicted cost of the finalized model, in `unit`."""
        if self.model is None:
            return self.fixed + kept_cost
        from costmodels import bridge

        return float(bridge.predict_cost(self.model, model))


def plan_costs(spec: JobSpec, model: nn.Module, example_input: Tensor, store: JobStore,
               tenant: str | None) -> CostPlan:
    """Costs and budget fraction for `spec` on `model` (on its training device); the cost
    model is validated and the block costs computed here, once per job."""
    kind, s = spec.cost_model.kind, spec.sparsity
    dense = s.method == "dense"
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
