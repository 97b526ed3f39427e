"""What each block of a job's model costs, and the budget as the Sparsifier's fraction.

- params: one per weight (the Sparsifier's default); sparsity.budget is the density of the
  masked weights.
- flops: multiply-adds of each block at the dataset's input size (costmodels.builtin);
  sparsity.budget is the kept fraction of the masked layers' FLOPs.
- fitted: a stored latency model (per layer, latency = intercept + slope x nonzero blocks).
  sparsity.budget means "at most this fraction of the dense model's latency", or
  cost_model.budget_ms an absolute latency; spartan_service.costmodels.bridge turns either into the
  Sparsifier's fraction, counting intercepts, overhead and unmasked layers as fixed cost.
  The stored model is named by id (that version) or by name: then the newest version whose
  hardware fingerprint is this worker's (costmodels.hardware), at the job's batch size if one
  was profiled there. A model measured on other hardware is used with a warning, or refused
  with cost_model.strict_hardware.

With sparsity.structure "channels" the same three kinds are per-layer functions of the kept
widths (spartan.channel_costs; costmodels.channel_bridge): params and FLOPs built in, fitted
from a structured profile; the Sparsifier takes the per-layer coefficients.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from spartan_service.costmodels.schema import CostModel
from spartan_service.jobs.models import CostModel as StoredCostModel
from spartan_service.jobs.spec import CostSpec, JobSpec
from spartan_service.jobs.store import JobStore


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
    # The stored model used (fitted): id, name, version, batch, hardware, the worker's
    # hardware and whether they match; and its earlier deployment points (closing the loop).
    source: dict[str, Any] | None = None
    points: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # for the job's record and report
    # maskable weights left dense because their dense latency is the better buy: the
    # Sparsifier masks the others only (costmodels.dense_choice)
    dense_layers: tuple[str, ...] = ()
    dense: float | None = None  # the dense model's predicted cost, when it is not fixed + all
    # the masked cost (a fitted latency capped at each layer's dense latency)

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
        from spartan_service.costmodels import bridge

        return float(bridge.predict_cost(self.model, model))


def pick_version(versions: list[StoredCostModel], fingerprint: str, batch: int
                 ) -> StoredCostModel:
    """The newest version measured on this hardware, preferring one profiled at `batch`;
    else the newest of all (whose hardware differs: the caller warns or refuses)."""
    matching = [v for v in versions if v.fingerprint == fingerprint]
    for row in matching:
        if row.batch == batch:
            return row
    return matching[0] if matching else versions[0]


def stored_model(cost: CostSpec, store: JobStore, tenant: str | None, device: Any,
                 batch: int) -> tuple[StoredCostModel, dict[str, Any], list[str]]:
    """The stored cost model a job uses, its provenance for the report, and warnings. Raises
    ValueError when it is missing, or measured elsewhere while strict_hardware is set."""
    from spartan_service.costmodels import hardware

    here = hardware.collect(device)
    fingerprint = hardware.fingerprint(here)
    if cost.name:
        versions = store.cost_model_versions(tenant or "", cost.name)
        if not versions:
            raise ValueError(f"no cost model named '{cost.name}'")
        row = pick_version(versions, fingerprint, batch)
    else:
        found = store.get_cost_model(cost.id or "", tenant=tenant)
        if found is None:
            raise ValueError(f"cost model '{cost.id}' not found")
        row = found
    what = f"cost model {row.name or row.id} (version {row.version})"
    source: dict[str, Any] = {
        "id": row.id, "name": row.name, "version": row.version, "batch": row.batch,
        "fingerprint": row.fingerprint, "hardware": row.hardware,
        "worker_fingerprint": fingerprint, "worker_hardware": here,
        "hardware_match": row.fingerprint == fingerprint}
    warnings = []
    if row.fingerprint is None:
        warnings.append(f"{what} does not say which hardware it was measured on; its latency "
                        "predictions for this worker are unchecked")
        source["hardware_match"] = None
    elif row.fingerprint != fingerprint:
        diffs = "; ".join(hardware.differences(row.hardware or {}, here))
        text = (f"{what} was measured on other hardware ({row.hardware_label}) than this "
                f"worker's ({hardware.label(here)}): {diffs}")
        if cost.strict_hardware:
            raise ValueError(f"{text}; refused because cost_model.strict_hardware is true "
                             "(profile this worker, or name a cost model measured here)")
        warnings.append(f"{text}; its latency predictions may not hold here")
    return row, source, warnings


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
    from spartan_service.costmodels import bridge, builtin

    block = (s.block[0], s.block[1])
    prefixes = list(s.prefixes) if s.prefixes else None
    if kind == "flops":
        was_training = model.training
        model.eval()  # the probe forward must not update batch-norm statistics
        try:
            cost_model = builtin.flops_cost_model(model, example_input, block)
        finally:
            model.train(was_training)
        source: dict[str, Any] | None = None
        points: list[dict[str, Any]] = []
        warnings: list[str] = []
    else:
        row, source, warnings = stored_model(spec.cost_model, store, tenant,
                                             example_input.device, spec.training.batch_size)
        cost_model = row.data
        points = _points(store, row.id)
    split = bridge.split_costs(cost_model, model, block, prefixes=prefixes)
    capped = split.capped()[1]  # the dense model's predicted cost
    budget_ms = spec.cost_model.budget_ms
    budget: float | None
    if dense:
        fraction, budget = 1.0, budget_ms
    elif budget_ms is not None or kind == "fitted":
        # piecewise latency: a layer may be better left dense than masked (dense_choice)
        from spartan_service.costmodels.dense_choice import piecewise_split

        amount, unit = (budget_ms, "ms") if budget_ms is not None else (s.budget, "fraction")
        split, fraction, target = piecewise_split(split, model, amount, unit, s.allocation)
        budget = budget_ms if budget_ms is not None else target
        if split.dense_layers:
            warnings.append(f"kept dense with all their weights: {', '.join(split.dense_layers)} "
                            "(under the fitted piecewise latency their dense kernel buys more "
                            "than masking them; the other layers share the budget)")
    else:
        fraction, budget = s.budget, None
    return CostPlan(kind, split.cost_model.unit, float(fraction), costs=split.costs,
                    fixed=split.fixed, budget=budget, model=split.cost_model, source=source,
                    points=points, warnings=warnings, dense_layers=split.dense_layers,
                    dense=capped)


def _channel_costs(spec: JobSpec, model: nn.Module, example: Tensor, store: JobStore,
                   tenant: str | None) -> CostPlan:
    from spartan.channels import require_items, trace_channels
    from spartan_service.costmodels import builtin, channel_bridge
    from spartan_service.costmodels.schema import validate_cost_model

    kind, s = spec.cost_model.kind, spec.sparsity
    dense = s.method == "dense"
    source: dict[str, Any] | None = None
    points: list[dict[str, Any]] = []
    warnings: list[str] = []
    # first: a model with nothing to remove fails here, saying why (tracing restores the
    # model's train / eval mode)
    graph = require_items(trace_channels(model, example))
    if kind == "params" and spec.cost_model.budget_ms is None:
        cost_model: Any = builtin.channel_cost_model(model, example, "params", graph)
    elif kind == "flops":
        cost_model = builtin.channel_cost_model(model, example, "flops", graph)
    else:
        row, source, warnings = stored_model(spec.cost_model, store, tenant, example.device,
                                             spec.training.batch_size)
        cost_model = row.data
        points = _points(store, row.id)
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
                    model=cm, structure="channels", source=source, points=points,
                    warnings=warnings)


def _points(store: JobStore, cost_model_id: str) -> list[dict[str, Any]]:
    """The deployment points stored with a cost model (closing the loop)."""
    return [{"job_id": p.job_id, "batch": p.batch, "measured": p.measured, "layers": p.layers}
            for p in store.deployment_points([cost_model_id])]
