"""Closing the loop: after training, the exported model measured on this worker beside the cost
model's prediction, kept with the cost model as a held-out point.

The model measured is the one the job exports (`model.sparse.safetensors`: the kernels
`spartan.to_sparse` chose, or for a structured job the model `spartan.shrink` made).
Whole-model times at batch 1 and the training batch are the speedup section's (worker.speedup:
the same model, median of repeats; not timed twice); each cost-model layer is timed here, on
the input it gets inside the deployed model, at those batch sizes and at the cost model's own
batch (the one its prediction is for; the whole model too when that batch is another),
round-robin (warm-up, repeats, median; the quietest of a few rounds, as the profile:
costmodels.timing.time_quietest). The prediction for the same model is
the cost model's overhead plus, per layer, intercept + slope x its nonzero blocks (counted in
the cost model's block), or for a structured cost model the layer's bilinear fit at the kept
widths (costmodels.fit_channels.layer_latency); costmodels.deployment turns the stored points
into the cost model's error on deployed models, and refits from them.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from spartan_service.costmodels.schema import CostModel

log = logging.getLogger(__name__)

REPEATS, WARMUP = 15, 2


def nonzero_blocks(model: nn.Module, cost_model: CostModel) -> dict[str, int]:
    """Nonzero blocks of each cost-model layer's weight, in the layer's cost-model block."""
    from spartan.layout import block_values
    from spartan_service.costmodels.bridge import _find_weight

    out = {}
    with torch.no_grad():
        for name, lay in cost_model.layers.items():
            w = _find_weight(model, name)
            if w is None:
                raise ValueError(f"cost-model layer {name!r} is not a weight of the model")
            out[name] = int((block_values(w.detach(), lay.block) > 0).sum())
    return out


def kept_widths(model: nn.Module, example: Tensor, cost_model: CostModel
                ) -> dict[str, tuple[int, int]]:
    """(kept inputs, kept outputs) of each structured cost-model layer in the model `shrink`
    exports from the finalized `model` (spartan.channel_costs.widths, pinned channels
    counted, as the channel Sparsifier costs them); a layer no channel of which can go keeps
    its full widths."""
    from spartan.channel_costs import widths
    from spartan.channels import trace_channels
    from spartan.shrink import removable_items

    with torch.no_grad():
        graph = trace_channels(model, example[:2])
        keep = ~removable_items(graph)
    out = {}
    for name, entry in cost_model.layers.items():
        if name in graph.layers:
            kin, kout = widths(graph.layers[name], keep)
        else:
            full = (entry.model_extra or {}).get("full")
            if full is None:
                raise ValueError(f"cost-model layer {name!r} is not a prunable layer of the "
                                 "model and has no full widths")
            kin, kout = float(full[0]), float(full[1])
        out[name] = (round(kin), round(kout))
    return out


def _pairs(entry: Any, kin: int, kout: int) -> int:
    """Input-output channel pairs a structured layer connects (its profile's nnz_blocks)."""
    extra = entry.model_extra or {}
    if extra.get("kind") == "conv" and extra.get("depthwise"):
        return kout
    return kin * kout // int(extra.get("groups", 1) or 1)


def layer_rows(model: nn.Module, example: Tensor, cost_model: CostModel,
               kernels: dict[str, str]) -> list[dict[str, Any]]:
    """A point's layers before timing: name, nnz_blocks, kernel, and for structured layers
    kept_in / kept_out (costmodels.deployment)."""
    if any(lay.structure == "channels" for lay in cost_model.layers.values()):
        kept = kept_widths(model, example, cost_model)
        return [{"name": name, "nnz_blocks": _pairs(cost_model.layers[name], kin, kout),
                 "kept_in": kin, "kept_out": kout, "kernel": "dense"}
                for name, (kin, kout) in kept.items()]
    return [{"name": name, "nnz_blocks": nnz,
             "kernel": kernels.get(f"{name}.weight", kernels.get(name, "dense"))}
            for name, nnz in nonzero_blocks(model, cost_model).items()]


Call = tuple[tuple[Any, ...], dict[str, Any]]


def _layer_inputs(runner: nn.Module, names: list[str], x: Tensor) -> dict[str, Call]:
    """The arguments of each named submodule's first call in `runner` (an attention module
    gets query, key, value and its flags: replayed as they came)."""
    seen: dict[str, Call] = {}
    hooks = []
    for name in names:
        try:
            module = runner.get_submodule(name)
        except AttributeError:
            continue  # a parameter path (attention projections): timed inside its owner

        def hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
                 n: str = name) -> None:
            if n not in seen and (args or kwargs):
                seen[n] = (args, kwargs)
        hooks.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            runner(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def measure(runner: nn.Module, names: list[str], x: Tensor, device: torch.device,
            whole: bool, repeats: int = REPEATS) -> tuple[float | None, dict[str, float]]:
    """(whole-model median ms when `whole`, per-layer median ms) of `runner` on batch `x`."""
    from spartan_service.costmodels.timing import time_quietest

    inputs = _layer_inputs(runner, names, x)
    layers = {n: runner.get_submodule(n) for n in names if n in inputs}
    fns = ([partial(runner, x)] if whole else []) + [
        partial(m, *inputs[n][0], **inputs[n][1]) for n, m in layers.items()]
    with torch.no_grad():
        results = time_quietest(fns, repeats=repeats, warmup=WARMUP, device=device)
    total = results.pop(0)[0] if whole else None
    return total, {n: r[0] for n, r in zip(layers, results, strict=True)}


def measure_deployment(runner: nn.Module, model: nn.Module, example: Tensor,
                       train_batch: int, device: torch.device, cost_model: CostModel,
                       cost_batch: int | None, whole_ms: dict[int, float],
                       kernels: dict[str, str] | None = None) -> dict[str, Any]:
    """The report's `deployment` section (without the cost model's summary): `runner` (the
    exported model: sparse kernels, or the shrunk model of a structured job) measured per
    layer at each batch, the whole model taken from `whole_ms` (batch -> ms, the speedup
    section's) or timed here, and at the cost model's batch beside the prediction."""
    from spartan_service.costmodels.deployment import ERROR_THRESHOLD, predict_point
    from spartan_service.costmodels.timing import ROUNDS, keep_freed_memory

    keep_freed_memory()  # the allocator the profile was measured with (costmodels.timing)

    runner = runner.eval()
    layers = layer_rows(model, example, cost_model, kernels or {})
    names = [lay["name"] for lay in layers]
    n = len(example)
    cost_batch = cost_batch or train_batch
    rows: list[dict[str, Any]] = []
    for batch in sorted({1, train_batch, cost_batch}):
        xb = example[torch.arange(batch) % n].to(device)  # rows repeated past the example
        total, per_layer = measure(runner, names, xb, device, whole=batch not in whole_ms)
        rows.append({"batch": batch, "measured": whole_ms.get(batch, total),
                     "layers": per_layer})
    at = next(r for r in rows if r["batch"] == cost_batch)
    measured: dict[str, float] = at["layers"]
    for lay in layers:
        lay["measured"] = measured.get(lay["name"])
    predicted, per_layer_pred = predict_point(cost_model, layers)
    for lay in layers:
        lay["predicted"] = per_layer_pred[lay["name"]]
        lay["error"] = (abs(lay["predicted"] - lay["measured"]) / lay["measured"]
                        if lay["measured"] else None)
    whole: float = at["measured"]
    error = abs(predicted - whole) / whole
    return {
        "unit": "ms", "device": device.type, "batch_size": cost_batch,
        "statistic": f"median of {REPEATS} round-robin repeats, the quietest of {ROUNDS} "
                     "rounds (layers; the whole model as the speedup section)",
        "predicted": predicted, "measured": whole, "error": error,
        "within_tolerance": error <= ERROR_THRESHOLD, "tolerance": ERROR_THRESHOLD,
        "layers": layers, "batches": rows,
    }


def close_loop(plan: Any, sparse_model: Any | None, speedup: Any
               ) -> tuple[Any, dict[str, Any] | None, list[str]]:
    """(the report's deployment section, the point to store with the cost model, warnings)
    for a job trained against a fitted latency cost model (worker.plan.JobPlan). A failure is
    reported, not fatal: the trained model is already good."""
    from spartan_service.costmodels.deployment import evaluate
    from spartan_service.jobs import report as r
    from spartan_service.worker.lease import describe, finite

    costs = plan.costs
    source, cost_model = costs.source, costs.model
    runner = sparse_model.module if sparse_model is not None else plan.model
    whole_ms = ({row.batch: row.sparse_ms for row in speedup.batches}
                if isinstance(speedup, r.SpeedupSection) else {})
    try:
        section = measure_deployment(runner, plan.model, plan.example,
                                     plan.training.batch_size, plan.device, cost_model,
                                     source.get("batch"), whole_ms,
                                     sparse_model.kernels if sparse_model is not None else None)
    except Exception as exc:  # noqa: BLE001 (reported in the section)
        log.exception("job %s: deployment measurement failed", plan.job.id)
        return r.DeploymentFailed(error=describe(exc)), None, []
    point = {"cost_model_id": source["id"], "batch": section["batch_size"],
             "predicted": section["predicted"], "measured": section["measured"],
             "layers": finite(section["layers"]), "fingerprint": source["worker_fingerprint"]}
    others = [p for p in costs.points if p["job_id"] != plan.job.id]
    summary = evaluate(cost_model, [*others, {**point, "job_id": plan.job.id}])
    section["cost_model"] = {"id": source["id"], "name": source.get("name"),
                             "version": source.get("version"), "points": summary["points"],
                             "mape": summary["mape"], "needs_refit": summary["needs_refit"]}
    warnings = []
    if not section["within_tolerance"] or summary["needs_refit"]:
        text = (f"the cost model's prediction was off by {section['error']:.0%} for this model "
                f"({section['predicted']:.4g} ms predicted, {section['measured']:.4g} ms "
                f"measured at batch {section['batch_size']}); its error over "
                f"{summary['points']} deployed model(s) is {summary['mape']:.0%}: "
                f"POST /v1/cost-models/{source['id']}/refit folds these measurements in")
        section["message"] = text
        section["refit"] = {"method": "POST", "url": f"/v1/cost-models/{source['id']}/refit"}
        warnings.append(text)
    return r.DeploymentSection.model_validate(finite(section)), point, warnings
