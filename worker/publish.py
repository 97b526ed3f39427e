"""The last stage of a job: the report (jobs.report.Report) and every artifact, written from one
manifest, report.json last.

About `accuracy.dense` in the report (the task's metric, like `accuracy.sparse`), by the
job's resolved `baseline`:
- method "dense": the job's own final metric;
- "train": the final metric of the dense twin trained beside the sparse model;
- "evaluate": the metric of the starting (pretrained) weights before any training;
- "none": null.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors.torch import save
from torch import Tensor, nn

from spartan.layout import maskable_weights
from spartan.report import LayerReport, SparsityReport
from spartan_service.jobs import catalog
from spartan_service.jobs import report as r
from spartan_service.jobs.artifacts import ArtifactStore
from spartan_service.worker.costs import CostPlan
from spartan_service.worker.lease import describe, finite
from spartan_service.worker.objectives import evaluate
from spartan_service.worker.plan import JobPlan
from spartan_service.worker.training import LoopState

log = logging.getLogger(__name__)

DENSE_SOURCES = {
    "job": "this job (method 'dense')",
    "train": "a dense twin trained beside the sparse model (baseline 'train')",
    "evaluate": "the initial weights (pretrained, or model.weights) before sparsifying "
                "(baseline 'evaluate')",
    "none": "not measured (baseline 'none'): use baseline 'train' or 'evaluate'",
}
KEPT_TOLERANCE = 0.15  # a latency promise is kept when measured <= promised x 1.15


@dataclass(frozen=True)
class Outcome:
    """What the job record gets: final metrics and progress; the warnings learned while
    publishing, and the deployment point to store with the cost model."""

    metrics: dict[str, Any]
    progress: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    deployment_point: dict[str, Any] | None = None


def tensors_bytes(tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """safetensors bytes of CPU copies (no shared storage, contiguous)."""
    return save({k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()},
                metadata=metadata)


def dense_report(model: nn.Module, plan: CostPlan, prefixes: list[str] | None,
                 allocation: str, step: int) -> SparsityReport:
    """A dense job's sparsity section, in the shape of the Sparsifier's."""
    rows = []
    for name, p in maskable_weights(model, prefixes).items():
        cost = float(plan.costs[name].sum()) if plan.costs else float(p.numel())
        n = p.shape[0] * p.shape[1]
        rows.append(LayerReport(name, tuple(p.shape), (1, 1), n, n, p.numel(), p.numel(), cost,
                                cost, budget_share=None))
    return SparsityReport("dense", allocation, 1.0, step, tuple(rows))


def cost_section(plan: CostPlan, cost: float, predicted: float) -> r.CostSection:
    """Predicted cost of the sparse model beside the budget, in the cost model's unit."""
    budget = plan.budget_cost(cost)
    return r.CostSection(
        kind=plan.kind, unit=plan.unit, budget_fraction=plan.budget_fraction, budget=budget,
        predicted=predicted, dense=plan.dense if plan.dense is not None else plan.fixed + cost,
        fixed=plan.fixed,
        within_budget=predicted <= budget * (1 + 1e-4),
        predicted_vs_budget=predicted / budget if budget else None,
        cost_model=finite(plan.source) if plan.source is not None else None)


def accuracy_section(plan: JobPlan, state: LoopState, final: float | None
                     ) -> r.AccuracySection:
    method, task = plan.spec.sparsity.method, plan.task
    source = "job" if method == "dense" else plan.baseline
    dense: float | None = None
    if source == "job":
        dense = final
    elif source == "train" and plan.twin is not None:
        dense = evaluate(plan.twin.model, task, plan.batches.validation(),
                         plan.twin.precision.autocast)[0]
    elif source == "evaluate":
        dense = state.initial_accuracy
    return r.AccuracySection(sparse=final if method != "dense" else None, final=final,
                             dense=dense, dense_source=DENSE_SOURCES[source],
                             initial=state.initial_accuracy, metric=task.metric,
                             higher_is_better=task.higher_is_better, baseline=source)


def latency_section(speedup: r.SpeedupSection, cost: r.CostSection) -> r.LatencySection:
    row = speedup.batches[-1]  # the training batch size
    timed = cost.unit == "ms"
    promised = cost.budget if timed and cost.kind == "fitted" else None
    predicted = cost.predicted if timed else None
    kept = None if promised is None else row.sparse_ms <= promised * (1 + KEPT_TOLERANCE)
    return r.LatencySection(
        unit=speedup.unit, device=speedup.device, batch_size=row.batch,
        dense_measured=row.dense_ms, sparse_measured=row.sparse_ms, predicted=predicted,
        promised=promised, kept=kept,
        measured_vs_promised=None if promised is None else row.sparse_ms / promised,
        note=promise_note(row.sparse_ms, promised, predicted, kept, row.batch))


def promise_note(measured: float, promised: float | None, predicted: float | None,
                 kept: bool | None, batch: int) -> str | None:
    """One plain sentence on the latency promise: kept, or by how much and why not."""
    if promised is None or kept is None:
        return None
    over = measured / promised - 1
    if kept:
        return (f"Promise kept: {measured:.4g} ms measured at batch {batch} against "
                f"{promised:.4g} ms promised ({over:+.0%}; the limit is +15%).")
    why = "the machine or the load differ from when the cost model was profiled"
    if predicted is not None:
        miss = measured / predicted - 1
        if predicted > promised * (1 + 1e-3):
            why = (f"the model could not be pruned down to the budget (predicted "
                   f"{predicted:.4g} ms: the per-layer floors, min_keep, or the fixed cost)")
        elif abs(miss) > KEPT_TOLERANCE:
            why = (f"the cost model predicted {predicted:.4g} ms, {miss:+.0%} off the "
                   f"measurement: its fit is off for this model or this machine's speed "
                   "changed since it was profiled (profile again on the worker, without "
                   "--quick)")
    return (f"Promise not kept: {measured:.4g} ms measured at batch {batch} is {over:.0%} "
            f"over the promised {promised:.4g} ms (the limit is 15%), because {why}.")


def export(plan: JobPlan, cost: r.CostSection) -> tuple[Any | None, r.SpeedupSection |
                                                        r.SpeedupFailed]:
    """The sparse model (spartan.SparseModel) and its timing against dense; a failure here is
    reported, not fatal: the trained model is already good."""
    from spartan_service.worker.speedup import speedup_report

    spec, data = plan.spec, plan.data
    arch = {"arch": spec.model.arch, "kwargs": spec.model.kwargs,
            "input_shape": None if data.input_shape is None else list(data.input_shape),
            "num_classes": data.num_classes}
    try:
        if catalog.is_hf(spec.model.arch):  # rebuilt from its config: no model folder needed
            from spartan import hf
            from spartan_service.zoo.hf import head

            arch["hf"] = hf.describe(plan.model, head(spec.training.task, data.text))
        if spec.sparsity.structure == "channels":
            return shrunk_export(plan, cost, arch)
        sparse, section = speedup_report(plan.model, plan.example, spec.training.batch_size,
                                         plan.device, cost.model_dump(), arch,
                                         mask=plan.example_mask)
        return sparse, r.SpeedupSection.model_validate(section)
    except Exception as exc:  # noqa: BLE001 (any kernel failure: say so in the report)
        log.exception("job %s: sparse export failed", plan.job.id)
        return None, r.SpeedupFailed(error=describe(exc))


def shrunk_export(plan: JobPlan, cost: r.CostSection, arch: dict[str, Any]
                  ) -> tuple[Any, r.SpeedupSection]:
    """Structured jobs: the physically smaller model (spartan.shrink), saved with its plan,
    timed against the finalized one."""
    from spartan import SparseModel, shrink
    from spartan_service.worker.speedup import shrunk_report

    model = plan.model.eval()
    small = shrink(model, plan.example[:2]).eval()
    section = shrunk_report(model, small, plan.example, plan.spec.training.batch_size,
                            plan.device, cost.model_dump())
    return SparseModel(small, {}, arch), r.SpeedupSection.model_validate(section)


def publish(plan: JobPlan, state: LoopState, artifacts: ArtifactStore,
            resumed_from: int | None, progress: dict[str, Any]) -> Outcome:
    """Finalize the model, build the report and write every artifact of the job."""
    job, spec, model, s = plan.job, plan.spec, plan.model, plan.spec.sparsity
    if plan.sparsifier is not None:
        masks = plan.sparsifier.masks()
        sparsity = plan.sparsifier.finalize()
    else:
        masks = {n: torch.ones_like(p, dtype=torch.bool)
                 for n, p in maskable_weights(model, s.prefixes).items()}
        sparsity = dense_report(model, plan.costs, s.prefixes, s.allocation, state.step)
    params = dict(model.named_parameters())
    nonzero = sum(int((params[n] != 0).sum()) for n in masks)
    measured = nonzero / sum(params[n].numel() for n in masks)
    final_acc, final_loss = evaluate(model, plan.task, plan.batches.validation(),
                                     plan.precision.autocast)
    cost = cost_section(plan.costs, sparsity.cost,
                        plan.costs.predicted(model, sparsity.kept_cost))
    sparse_model, speedup = export(plan, cost)
    latency = latency_section(speedup, cost) if isinstance(speedup, r.SpeedupSection) else None
    missed = [latency.note] if latency is not None and latency.kept is False and latency.note \
        else []
    deployment: r.DeploymentSection | r.DeploymentFailed | None = None
    point: dict[str, Any] | None = None
    learned: list[str] = []
    if plan.costs.source is not None and plan.costs.unit == "ms":
        from spartan_service.worker.deployment import close_loop

        deployment, point, learned = close_loop(plan, sparse_model, speedup)
    warnings = list(dict.fromkeys([*(job.warnings or []), *plan.costs.warnings, *missed,
                                   *learned]))
    rep = r.Report(
        job_id=job.id, name=job.name, spec=job.spec,
        model=r.ModelSection(arch=spec.model.arch,
                             input_shape=None if plan.data.input_shape is None
                             else list(plan.data.input_shape),
                             num_classes=plan.data.num_classes,
                             parameters=sum(p.numel() for p in model.parameters())),
        data=r.DataSection(dataset=spec.data.dataset,
                           train_examples=plan.data.train_examples,
                           val_examples=plan.data.val_examples),
        sparsity=r.SparsitySection.model_validate(
            {**sparsity.to_dict(), "measured_density": measured}),
        cost=cost,
        accuracy=accuracy_section(plan, state, final_acc),
        val_loss=final_loss,
        training=r.TrainingSection(steps=state.step, epochs=spec.training.epochs,
                                   device=plan.device.type, seconds=state.train_seconds,
                                   attempts=job.attempts, resumed_from_step=resumed_from,
                                   world_size=plan.ranks.world,
                                   global_batch=spec.training.batch_size,
                                   ranks_compared=state.ranks_compared),
        curve=state.history, warnings=warnings, speedup=speedup,
        latency=latency, deployment=deployment)
    meta = {"job_id": job.id, "arch": spec.model.arch,
            "input_shape": ",".join(map(str, plan.data.input_shape or ())),
            "num_classes": str(plan.data.num_classes)}
    manifest: dict[str, bytes] = {
        r.MODEL: tensors_bytes(model.state_dict(), meta),
        r.MASKS: tensors_bytes({k: m.to(torch.bool) for k, m in masks.items()}),
        r.METRICS: state.metrics_jsonl(),
    }
    if sparse_model is not None:
        from spartan.sparse_io import sparse_bytes

        manifest[r.SPARSE_MODEL] = sparse_bytes(sparse_model)
    manifest[r.REPORT] = json.dumps(finite(rep.model_dump(mode="json")), indent=2,
                                    allow_nan=False).encode()  # last: "all written"
    for name, data in manifest.items():
        artifacts.write_bytes(job.id, name, data)
    metrics = {"history": state.history[-500:], **(state.history[-1] if state.history else {}),
               "val_accuracy": final_acc, "val_loss": final_loss, "metric": plan.task.metric,
               f"val_{plan.task.metric}": final_acc,
               "dense_accuracy": rep.accuracy.dense, "density": rep.sparsity.density,
               "predicted_cost": cost.predicted, "budget_cost": cost.budget,
               "cost_unit": cost.unit}
    rate = state.step / state.train_seconds if state.train_seconds else None
    return Outcome(finite(metrics), finite({**progress, "eta_s": 0.0, "val_accuracy": final_acc,
                                            "steps_per_s": rate}),
                   warnings=learned, deployment_point=point)
