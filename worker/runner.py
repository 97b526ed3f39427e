"""Runs one job end to end, without Celery: claim, plan, train, publish, finish.

`run_job` is what the Celery task calls; tests call it in-process. A job flows one way through
three stages (worker.plan, worker.training, worker.publish); nothing calls back up. A job ends
succeeded, failed (one-line "Type: message", traceback in the log), or cancelled; when another
worker took the job over (this one was presumed dead), this one stops and leaves the record
alone. A later attempt resumes from the job's last checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from typing import Any

import torch

from spartan_service.jobs.admission import check_built
from spartan_service.jobs.artifacts import ArtifactStore
from spartan_service.jobs.models import Job
from spartan_service.jobs.queue import enqueue_job
from spartan_service.jobs.report import REPORT
from spartan_service.jobs.results import summarize
from spartan_service.jobs.settings import Settings
from spartan_service.jobs.status import JobStatus
from spartan_service.jobs.store import JobStore
from spartan_service.worker import joblog
from spartan_service.worker.checkpoint import Checkpointer, discard_checkpoint
from spartan_service.worker.device_lock import hold_device
from spartan_service.worker.launch import RanksLost, launch
from spartan_service.worker.lease import Lease, StopRequested, describe, finite
from spartan_service.worker.objectives import evaluate
from spartan_service.worker.plan import JobPlan, make_plan, pick_device
from spartan_service.worker.publish import Outcome, publish
from spartan_service.worker.ranks import SINGLE, Ranks
from spartan_service.worker.tracking import TrackedCheckpoints, Trackers
from spartan_service.worker.training import Loop, LoopState

log = logging.getLogger(__name__)
__all__ = ["describe", "run_job", "worker_name"]


def worker_name(hostname: str | None = None) -> str:
    """Unique per run: the store fences progress and results by it."""
    return f"{hostname or socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:6]}"


def run_job(job_id: str, store: JobStore, artifacts: ArtifactStore, settings: Settings,
            worker: str | None = None) -> None:
    """Claim and run a job; returns once it is finished or no longer this worker's."""
    name = worker or worker_name()
    job = store.claim_job(job_id, name, settings.max_attempts,
                          stale_after_s=settings.heartbeat_timeout_s)
    if job is None:
        log.info("job %s is not there to run (finished, cancelled or running elsewhere)", job_id)
        return
    with joblog.capture(store, job_id, job.attempts):
        log.info("job %s: attempt %d on %s", job_id, job.attempts, name)
        run_claimed(job, store, artifacts, settings, name)


def run_claimed(job: Job, store: JobStore, artifacts: ArtifactStore, settings: Settings,
                name: str) -> None:
    """Run a job this worker has claimed, and record how it ended."""
    job_id = job.id
    interval = min(settings.progress_interval_s, settings.heartbeat_timeout_s / 4)
    outcome: Outcome | None = None
    error: str | None = None
    stopped = lost = False
    processes = int((job.spec.get("resources") or {}).get("processes", 1))
    lease = Lease(store, job_id, name, interval)
    with lease:
        try:
            outcome = run_attempt(job, artifacts, store, settings, lease, name, processes)
        except StopRequested:
            stopped = True
        except RanksLost as exc:
            log.warning("job %s: a rank was lost (%s); the job resumes from its checkpoint",
                        job_id, exc)
            lost = True
        except Exception as exc:
            log.exception("job %s failed", job_id)
            error = describe(exc)
    joblog.flush()
    if lost:
        requeue_lost(store, job_id, name)
    elif outcome is not None:
        if store.finish_job(job_id, JobStatus.succeeded, metrics=outcome.metrics,
                            progress=outcome.progress, worker=name):
            # only now: had the record failed, a retry would resume
            discard_checkpoint(artifacts, job_id)
        else:
            log.warning("job %s finished here but is no longer ours; result not recorded", job_id)
    elif error is not None:
        store.finish_job(job_id, JobStatus.failed, error=error, progress=lease.progress,
                         worker=name)
    elif stopped:
        current = store.get_job(job_id)
        if current is not None and current.worker == name and current.cancel_requested:
            store.finish_job(job_id, JobStatus.cancelled, progress=lease.progress, worker=name)
            log.info("job %s cancelled", job_id)
        else:
            log.warning("job %s was taken over by another worker; stopping", job_id)


def job_device(job: Job) -> torch.device:
    """The device a job of either kind runs on (ValueError: cuda asked of a CPU worker)."""
    requested = (job.spec.get("device") if job.kind == "profile"
                 else (job.spec.get("training") or {}).get("device"))
    return pick_device(str(requested or "auto"))


def run_attempt(job: Job, artifacts: ArtifactStore, store: JobStore, settings: Settings,
                lease: Lease, name: str, processes: int) -> Outcome:
    """Run a training or a profile job on its device, held as worker.device_lock says:
    shared for training, exclusive for profiling (no training beside a profile there)."""
    profile = job.kind == "profile"
    device = job_device(job)

    def waiting() -> None:
        lease.update({"step": 0, "total_steps": None, "phase": "waiting for the device",
                      "device": device.type})

    with hold_device(settings.locks_dir, device.type, exclusive=profile, check=lease.check,
                     on_wait=waiting):
        if profile:
            from spartan_service.worker.profile_run import ProfileRun

            metrics, progress = ProfileRun(job, store, artifacts, settings, lease).run()
            return Outcome(finite(metrics), finite(progress))
        if processes > 1:  # rank 0 of the launched ranks holds its own lease too
            return Outcome(*launch(job.id, processes, settings, name,
                                   threads=max(1, torch.get_num_threads() // processes)))
        done = attempt(job, artifacts, store, settings, lease)
        assert done is not None
        return done[0]


def record_deployment(store: JobStore, job: Job, result: Outcome) -> None:
    """Store the job's deployment measurement with its cost model (a held-out point) and put
    the warnings the job learned while publishing (a prediction off by more than 15%) on its
    record."""
    for warning in result.warnings:
        store.add_warning(job.id, warning)
    point = result.deployment_point
    if point is not None:
        store.add_deployment_point(tenant=job.tenant, job_id=job.id, **point)


class ResourceLimitError(RuntimeError):
    """The built model or the loaded data is over the queue's limits (jobs.admission)."""


def check_resources(plan: JobPlan, settings: Settings) -> None:
    """What submit could not estimate (plugins, Hugging Face models, loaded data), checked
    once built, before any training memory (gradients, optimiser state) is taken."""
    data = plan.data
    refused = check_built(
        params=sum(p.numel() for p in plan.model.parameters()),
        dataset_bytes=data.resident_bytes,
        steps=plan.total_steps, limits=settings.job_limits(plan.job.queue))
    if refused:
        raise ResourceLimitError(refused)


def requeue_lost(store: JobStore, job_id: str, worker: str) -> None:
    """Crash recovery at once for an attempt whose rank died (the reaper would do the same
    after heartbeat_timeout_s): back to queued and enqueued again; the next attempt resumes
    from the last checkpoint, on the same number of ranks."""
    current = store.get_job(job_id)
    if current is None or current.status != JobStatus.running or current.worker != worker:
        return
    if store.requeue(job_id, current.heartbeat_at):
        try:
            enqueue_job(job_id, current.queue)
        except Exception:  # the reaper re-enqueues a queued job whose message is missing
            log.warning("could not enqueue job %s again; the reaper will", job_id,
                        exc_info=True)


def attempt(job: Job, artifacts: ArtifactStore, store: JobStore, settings: Settings,
            lease: Lease, ranks: Ranks = SINGLE) -> tuple[Outcome, Checkpointer] | None:
    """One attempt at one job: plan, train (from the last checkpoint, if any), publish; the
    job's trackers (TensorBoard, MLflow) follow along. Under several ranks (worker.rank_job)
    each rank runs this; only rank 0 tracks and publishes (the others return None)."""
    plan = make_plan(job, store, settings, ranks)
    check_resources(plan, settings)
    if ranks.leader:
        for warning in plan.costs.warnings:  # e.g. a cost model measured on other hardware
            store.add_warning(job.id, warning)
    # rank 0 alone writes (TensorBoard files, MLflow runs)
    trackers = Trackers.for_job(job, plan.spec, artifacts, settings) if ranks.leader \
        else Trackers([])
    checkpoints = Checkpointer(artifacts, plan)
    state: LoopState | None = None
    try:
        state = checkpoints.restore()
        resumed_from = None if state is None else state.step
        if state is None:
            # The metric before training: baseline "evaluate"'s dense reference.
            state = LoopState(initial_accuracy=evaluate(
                plan.model, plan.task, plan.batches.validation(), plan.precision.autocast)[0]
                if ranks.leader else None)
        else:
            lease.beat(resumed_from_step=state.step)
            log.info("job %s: resumed from step %d", job.id, state.step)
        loop = Loop(plan, lease, TrackedCheckpoints(checkpoints, trackers),
                    settings.progress_interval_s)
        state = loop.run(state)
        if not ranks.leader:
            return None
        last = state.history[-1] if state.history else {}
        done = loop.progress(state, "done", last.get("loss"), last.get("accuracy"))
        outcome = publish(plan, state, artifacts, resumed_from, finite(done))
        record_deployment(store, job, outcome)
    except StopRequested:
        trackers.finish("cancelled", state)
        raise
    except Exception:
        trackers.finish("failed", state)
        raise
    trackers.finish("succeeded", state, artifacts_results(artifacts, job.id))
    return outcome, checkpoints


def artifacts_results(artifacts: ArtifactStore, job_id: str) -> dict[str, Any] | None:
    """The headline figures of the report just published."""
    try:
        return summarize(json.loads(artifacts.read_bytes(job_id, REPORT)))
    except (OSError, ValueError):
        return None
