"""Runs one job end to end, without Celery: claim, build, train, write results, finish.

`run_job` is what the Celery task calls; tests call it in-process. A job ends succeeded, failed
(one-line "Type: message", traceback in the log), or cancelled; when another worker took the
job over (this one was presumed dead), this one stops and leaves the record alone. A later
attempt resumes from the job's last checkpoint.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from jobs.artifacts import ArtifactStore
from jobs.models import Job
from jobs.settings import Settings
from jobs.spec import JobSpec
from jobs.store import JobStore
from jobs.uploads import upload_path
from worker import checkpoint
from worker.costs import CostPlan, plan_costs
from worker.data import load_dataset
from worker.lease import Lease, StopRequested, finite
from worker.models import build_model, load_weights
from worker.results import (
    accuracy_section,
    cost_section,
    dense_rows,
    metrics_bytes,
    sparsity_section,
    write_results,
)
from worker.training import (
    Loop,
    LoopState,
    evaluate,
    make_optimizer,
    pick_device,
    state_from_json,
    state_to_json,
    total_steps,
)

log = logging.getLogger(__name__)


def worker_name(hostname: str | None = None) -> str:
    """Unique per run: the store fences progress and results by it."""
    return f"{hostname or socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:6]}"


def describe(exc: BaseException) -> str:
    """One readable line for the job record."""
    if isinstance(exc, ValidationError):  # the stored spec no longer validates
        text = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return f"invalid job spec: {text}"[:1000]
    text = " ".join(str(exc).split()) or "no message"
    return f"{type(exc).__name__}: {text}"[:1000]


def run_job(job_id: str, store: JobStore, artifacts: ArtifactStore, settings: Settings,
            worker: str | None = None) -> None:
    """Claim and run a job; returns once it is finished or no longer this worker's."""
    name = worker or worker_name()
    job = store.claim_job(job_id, name, settings.max_attempts,
                          stale_after_s=settings.heartbeat_timeout_s)
    if job is None:
        log.info("job %s is not there to run (finished, cancelled or running elsewhere)", job_id)
        return
    log.info("job %s: attempt %d on %s", job_id, job.attempts, name)
    interval = min(settings.progress_interval_s, settings.heartbeat_timeout_s / 4)
    result: tuple[dict[str, Any], dict[str, Any]] | None = None
    error: str | None = None
    stopped = False
    lease = Lease(store, job_id, name, interval)
    with lease:
        try:
            result = JobRun(job, store, artifacts, settings, lease).run()
        except StopRequested:
            stopped = True
        except Exception as exc:
            log.exception("job %s failed", job_id)
            error = describe(exc)
    if result is not None:
        metrics, progress = result
        if store.finish_job(job_id, "succeeded", metrics=finite(metrics),
                            progress=finite(progress), worker=name):
            # Only now: had the record failed, a retry would resume from the checkpoint.
            artifacts.path(job_id, checkpoint.NAME).unlink(missing_ok=True)
        else:
            log.warning("job %s finished here but is no longer ours; result not recorded", job_id)
    elif error is not None:
        store.finish_job(job_id, "failed", error=error, progress=lease.progress, worker=name)
    elif stopped:
        current = store.get_job(job_id)
        if current is not None and current.worker == name and current.cancel_requested:
            store.finish_job(job_id, "cancelled", progress=lease.progress, worker=name)
            log.info("job %s cancelled", job_id)
        else:
            log.warning("job %s was taken over by another worker; stopping", job_id)


class JobRun:
    """One attempt at one job."""

    def __init__(self, job: Job, store: JobStore, artifacts: ArtifactStore, settings: Settings,
                 lease: Lease) -> None:
        self.job, self.store, self.artifacts, self.settings = job, store, artifacts, settings
        self.lease = lease
        self.resumed_from: int | None = None

    def upload(self, upload_id: str | None, kind: str | None) -> Path | None:
        if not upload_id:
            return None
        row = self.store.get_upload(upload_id, tenant=self.job.tenant)
        if row is None:
            raise ValueError(f"upload '{upload_id}' not found")
        if kind is not None and row.kind != kind:
            raise ValueError(f"upload '{upload_id}' is a .{row.kind} file; a .{kind} is needed")
        path = upload_path(self.settings.uploads_dir, upload_id, row.kind)
        if not path.is_file():
            raise ValueError(f"the file of upload '{upload_id}' is missing from the upload store")
        return path

    def run(self) -> tuple[dict[str, Any], dict[str, Any]]:
        spec = JobSpec.model_validate(self.job.spec)
        t = spec.training
        device = pick_device(t.device)
        torch.manual_seed(t.seed)
        data = load_dataset(spec.data.dataset, spec.data.kwargs, spec.data.val_fraction, t.seed,
                            upload=self.upload(spec.data.upload, None)).to(device)
        model = build_model(spec.model.arch, spec.model.kwargs, data.input_shape,
                            data.num_classes)
        weights = self.upload(spec.model.weights, "safetensors")
        if weights is not None:
            load_weights(model, weights)
        model.to(device)
        plan = plan_costs(spec, model, data.x_train[:1], self.store, self.job.tenant)
        sparsifier = self.sparsifier(spec, model, plan, len(data.y_train))
        optimizer = make_optimizer(model, t)
        total = total_steps(len(data.y_train), t)
        loop = Loop(model, optimizer, sparsifier, data, t, self.lease,
                    lambda s: self.save(s, model, optimizer, sparsifier, total),
                    self.settings.progress_interval_s)
        state = self.restore(model, optimizer, sparsifier, device, loop.total_steps)
        if state is None:
            state = LoopState(initial_accuracy=evaluate(model, data.x_val, data.y_val)[0])
        self.lease.update(loop.progress(state, (0.0, state.step), None, None, None))
        state = loop.run(state)
        return self.finish(spec, model, sparsifier, plan, data, state, loop, device)

    def sparsifier(self, spec: JobSpec, model: torch.nn.Module, plan: CostPlan,
                   n_train: int) -> Any | None:
        s = spec.sparsity
        if s.method == "dense":
            return None
        from spartan import Sparsifier, SparsifierConfig

        config = SparsifierConfig(
            method=s.method, budget=plan.budget_fraction, block=(s.block[0], s.block[1]),
            allocation=s.allocation, beta_init=s.beta_init, beta_final=s.beta_final,
            warmup_frac=s.warmup_frac, finetune_frac=s.finetune_frac, schedule=s.schedule,
            prefixes=tuple(s.prefixes) if s.prefixes else None)
        total = total_steps(n_train, spec.training)
        return Sparsifier(model, config, total, plan.costs)

    def save(self, state: LoopState, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             sparsifier: Any | None, total_steps: int) -> None:
        # The curve so far, for the dashboard while the job runs (rewritten whole: idempotent).
        self.artifacts.write_bytes(self.job.id, "metrics.jsonl", metrics_bytes(state))
        rng: dict[str, Any] = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        checkpoint.save_checkpoint(self.artifacts, self.job.id, {
            "total_steps": total_steps, "loop": state_to_json(state),
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "sparsifier": None if sparsifier is None else sparsifier.state_dict(), "rng": rng,
        })

    def restore(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                sparsifier: Any | None, device: torch.device, total_steps: int
                ) -> LoopState | None:
        if self.job.attempts <= 1:
            return None
        ckpt = checkpoint.load_checkpoint(self.artifacts, self.job.id, device)
        if ckpt is None:
            log.info("job %s: attempt %d starts over (no checkpoint)", self.job.id,
                     self.job.attempts)
            return None
        if ckpt["total_steps"] != total_steps:
            raise ValueError(f"checkpoint is for {ckpt['total_steps']} steps, this run has "
                             f"{total_steps}")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if sparsifier is not None:
            sparsifier.load_state_dict(ckpt["sparsifier"])
        torch.set_rng_state(ckpt["rng"]["cpu"].cpu())
        cuda = ckpt["rng"].get("cuda")
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
        state = state_from_json(ckpt["loop"])
        self.resumed_from = state.step
        self.lease.beat(resumed_from_step=state.step)
        log.info("job %s: resumed from step %d", self.job.id, state.step)
        return state

    def speedup(self, spec: JobSpec, model: torch.nn.Module, data: Any, device: torch.device,
                report: dict[str, Any]) -> Any | None:
        """Export the sparse model and time it against dense (report["speedup"]); a failure
        here is reported, not fatal: the trained model is already good."""
        from worker.speedup import speedup_report

        arch = {"arch": spec.model.arch, "kwargs": spec.model.kwargs,
                "input_shape": list(data.input_shape), "num_classes": data.num_classes}
        try:
            sparse, report["speedup"] = speedup_report(
                model, data.x_train, spec.training.batch_size, device, report["cost"], arch)
            return sparse
        except Exception as exc:  # noqa: BLE001 (any kernel failure: say so in the report)
            log.exception("job %s: sparse export failed", self.job.id)
            report["speedup"] = {"error": describe(exc)}
            return None

    def finish(self, spec: JobSpec, model: torch.nn.Module, sparsifier: Any | None,
               plan: CostPlan, data: Any, state: LoopState, loop: Loop, device: torch.device
               ) -> tuple[dict[str, Any], dict[str, Any]]:
        s = spec.sparsity
        if sparsifier is not None:
            masks = sparsifier.masks()
            sparsity = sparsifier.finalize().to_dict()
        else:
            from spartan.layout import maskable_weights

            masked = maskable_weights(model, s.prefixes)
            masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in masked.items()}
            sparsity = sparsity_section(dense_rows(model, plan, s.prefixes), "dense",
                                        s.allocation, 1.0, state.step)
        params = dict(model.named_parameters())
        nonzero = sum(int((params[n] != 0).sum()) for n in masks)
        sparsity["measured_density"] = nonzero / sum(params[n].numel() for n in masks)
        final_acc, final_loss = evaluate(model, data.x_val, data.y_val)
        report = {
            "job_id": self.job.id, "name": self.job.name, "spec": self.job.spec,
            "model": {"arch": spec.model.arch, "input_shape": list(data.input_shape),
                      "num_classes": data.num_classes,
                      "parameters": sum(p.numel() for p in model.parameters())},
            "data": {"dataset": spec.data.dataset, "train_examples": len(data.y_train),
                     "val_examples": len(data.y_val)},
            "sparsity": sparsity,
            "cost": cost_section(plan, sparsity, plan.predicted(model, sparsity["kept_cost"])),
            "accuracy": accuracy_section(state, final_acc, s.method, bool(spec.model.weights)),
            "val_loss": final_loss,
            "training": {"steps": state.step, "epochs": spec.training.epochs,
                         "device": device.type, "seconds": state.train_seconds,
                         "attempts": self.job.attempts, "resumed_from_step": self.resumed_from},
            "curve": state.history,
            "warnings": list(self.job.warnings or []),
        }
        meta = {"job_id": self.job.id, "arch": spec.model.arch,
                "input_shape": ",".join(map(str, data.input_shape)),
                "num_classes": str(data.num_classes)}
        sparse_model = self.speedup(spec, model, data, device, report)
        write_results(self.artifacts, self.job.id, model, masks, report, state, meta)
        if sparse_model is not None:
            from spartan.sparse_io import sparse_bytes

            self.artifacts.write_bytes(self.job.id, "model.sparse.safetensors",
                                       sparse_bytes(sparse_model))
        cost = report["cost"]
        metrics = {**loop.metrics(state), "val_accuracy": final_acc, "val_loss": final_loss,
                   "dense_accuracy": report["accuracy"]["dense"],
                   "density": sparsity["density"], "predicted_cost": cost["predicted"],
                   "budget_cost": cost["budget"], "cost_unit": cost["unit"]}
        last = state.history[-1] if state.history else {}
        rate = state.step / state.train_seconds if state.train_seconds else None
        progress = {**loop.progress(state, (0.0, state.step), "done", last.get("loss"),
                                    last.get("accuracy")),
                    "eta_s": 0.0, "val_accuracy": final_acc, "steps_per_s": rate}
        return metrics, progress
