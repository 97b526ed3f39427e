"""Celery tasks, registered on the app that jobs/queue.py defines, and the reaper.

The run task is thin: it takes a job id and calls worker.runner.run_job, which keeps all state
in the job store and the artifact store, so a redelivered or duplicated message is harmless
(the store's claim lets one worker run a job at a time).

The reaper is the crash-recovery path: a job whose worker stopped heartbeating for
settings.heartbeat_timeout_s goes back to its queue and resumes from its last checkpoint on
whichever worker takes it, in seconds rather than after the broker's visibility timeout; after
settings.max_attempts lost workers it ends failed. It also re-enqueues a job queued for
settings.requeue_queued_after_s whose message is no longer in the broker (a Redis restarted
without persistence, a deleted queue file), which would otherwise wait forever. Every worker's
main process runs it every few seconds (several reapers at once are safe: the requeue is
conditional, and a duplicate message is dropped by the claim).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from celery import Celery
from celery.signals import worker_process_init, worker_ready, worker_shutting_down

from spartan_service.jobs.artifacts import ArtifactStore
from spartan_service.jobs.fairness import tenant_ahead
from spartan_service.jobs.models import utcnow
from spartan_service.jobs.queue import REAP, RUN_JOB, enqueue_job, get_celery, waiting_job_ids
from spartan_service.jobs.registry import UNSERVED, unserved_warning
from spartan_service.jobs.settings import Settings, get_settings
from spartan_service.jobs.status import JobStatus
from spartan_service.jobs.store import JobStore, lost_reason
from spartan_service.worker.devices import capacity, devices, queues_served
from spartan_service.worker.process import die_with_parent, limit_threads
from spartan_service.worker.runner import run_job, worker_name

log = logging.getLogger(__name__)
app = get_celery()
_resources: dict[int, tuple[JobStore, ArtifactStore]] = {}
_stop_reaper = threading.Event()
_registry_name: list[str] = [""]
REQUEUE_PAUSE_S = 5.0
FAIR_PAUSE_S = 0.2


def resources(settings: Settings) -> tuple[JobStore, ArtifactStore]:
    """This process's store connections (per pid: a forked child never reuses its parent's)."""
    pid = os.getpid()
    if pid not in _resources:
        _resources.clear()
        _resources[pid] = (JobStore(settings.db_url, create=False),
                           ArtifactStore(settings.artifacts_dir))
    return _resources[pid]


@app.task(name=RUN_JOB, bind=True, ignore_result=True, acks_late=True)
def run_job_task(self: Any, job_id: str) -> None:
    settings = get_settings()
    store, artifacts = resources(settings)
    if not fits_here(store, job_id, settings):
        return
    if settings.fair_scheduling and not fair_turn(store, job_id):
        return
    run_job(job_id, store, artifacts, settings, worker=worker_name(self.request.hostname))


def fair_turn(store: JobStore, job_id: str) -> bool:
    """Whether it is this job's tenant's turn (jobs.fairness); if not, its message goes to
    the back of the queue, after a short pause (so that a worker left with only deferred
    messages does not spin)."""
    ahead = tenant_ahead(store, job_id)
    if ahead is None:
        return True
    job = store.get_job(job_id)
    if job is None:
        return True
    log.info("job %s of tenant %s deferred: tenant %s has the turn on queue %s", job_id,
             job.tenant, ahead, job.queue)
    time.sleep(FAIR_PAUSE_S)
    enqueue_job(job_id, job.queue)
    return False


def fits_here(store: JobStore, job_id: str, settings: Settings, app: Celery | None = None,
              pause_s: float | None = None) -> bool:
    """Whether this worker can give the job its ranks; if not, the job goes back to its queue
    (after a pause, so that a lone small worker does not spin on it) for a bigger worker."""
    job = store.get_job(job_id)
    if job is None or job.status != JobStatus.queued:
        return True  # nothing to decide here: run_job's claim sorts it out
    wanted = int((job.spec.get("resources") or {}).get("processes", 1))
    most = capacity(settings, [job.queue]).get(job.queue, 1)
    if wanted <= most:
        return True
    log.warning("job %s needs %d processes; this worker gives at most %d on queue %s: "
                "left to another worker", job_id, wanted, most, job.queue)
    time.sleep(REQUEUE_PAUSE_S if pause_s is None else pause_s)
    enqueue_job(job_id, job.queue, app=app)
    return False


def reap(store: JobStore, settings: Settings, app: Celery | None = None) -> list[str]:
    """Requeue running jobs whose heartbeat is stale; fail those out of attempts and end those
    whose cancel was requested; re-enqueue queued jobs whose message was lost. Returns the ids
    requeued or re-enqueued."""
    note_unserved(store)
    return reap_running(store, settings, app) + reenqueue_lost(store, settings, app)


def note_unserved(store: JobStore) -> None:
    """Say in each waiting job's record when no live worker serves its queue (once)."""
    workers = store.live_workers()
    for job in store.waiting_jobs(0):
        note = unserved_warning(workers, job.queue)
        if note:
            store.note_queued_warning(job.id, note, UNSERVED)


def reap_running(store: JobStore, settings: Settings, app: Celery | None = None) -> list[str]:
    requeued = []
    for job in store.stale_jobs(settings.heartbeat_timeout_s):
        lost = f"no heartbeat for {settings.heartbeat_timeout_s:g} s"
        if job.cancel_requested:
            if store.requeue(job.id, job.heartbeat_at):
                store.finish_job(job.id, JobStatus.cancelled)
            continue
        if job.attempts >= settings.max_attempts:
            if store.requeue(job.id, job.heartbeat_at):
                store.finish_job(job.id, JobStatus.failed, error=(
                    f"gave up after {job.attempts} attempts: the worker was lost each time "
                    f"({lost})" + lost_reason(job.warnings)))
                log.warning("job %s failed: out of attempts", job.id)
            continue
        # Enqueue before requeueing: if the broker is down nothing changes and the next round
        # retries; a message for a job that turns out alive is dropped by the claim.
        try:
            enqueue_job(job.id, job.queue, app=app)
        except Exception:
            log.warning("reaper could not enqueue job %s; will retry", job.id, exc_info=True)
            continue
        if store.requeue(job.id, job.heartbeat_at):
            log.warning("job %s: worker %s lost (%s); requeued", job.id, job.worker, lost)
            requeued.append(job.id)
    return requeued


def reenqueue_lost(store: JobStore, settings: Settings, app: Celery | None = None) -> list[str]:
    """Send again the message of each job queued for requeue_queued_after_s that the broker
    no longer holds. A job that merely waits its turn keeps its message and is left alone."""
    waiting = store.waiting_jobs(settings.requeue_queued_after_s)
    if not waiting:
        return []  # the usual case: no need to read the broker's queues
    try:
        in_broker = waiting_job_ids(app)
    except NotImplementedError as exc:  # a broker we cannot read: leave queued jobs alone
        log.debug("%s", exc)
        return []
    except Exception:
        log.warning("reaper could not list the broker's messages; will retry", exc_info=True)
        return []
    sent = []
    for job in waiting:
        if job.id in in_broker:
            continue
        waited = (utcnow() - job.updated_at).total_seconds()
        try:
            enqueue_job(job.id, job.queue, app=app)
        except Exception:
            log.warning("reaper could not enqueue job %s; will retry", job.id, exc_info=True)
            continue
        note = (f"{utcnow():%Y-%m-%d %H:%M:%S} UTC: re-enqueued after {waited:.0f} s queued "
                f"with no message in the broker (lost, e.g. in a broker restart)")
        if store.note_reenqueued(job.id, job.updated_at, note):
            log.warning("job %s: its message was lost; re-enqueued after %.0f s", job.id, waited)
            sent.append(job.id)
    return sent


@app.task(name=REAP, ignore_result=True)
def reap_task() -> list[str]:
    settings = get_settings()
    return reap(resources(settings)[0], settings)


def reap_interval(settings: Settings) -> float:
    return min(10.0, max(0.5, settings.heartbeat_timeout_s / 3))


def _reap_forever(settings: Settings, name: str) -> None:
    store = JobStore(settings.db_url, create=False)
    interval = reap_interval(settings)
    found = devices()
    can = capacity(settings, queues_served(), found)
    while True:
        try:  # advertise this worker every round (jobs.registry: admission at submit)
            store.register_worker(name, can, found)
        except Exception:
            log.warning("could not refresh this worker's registry row", exc_info=True)
        if _stop_reaper.wait(interval):
            break
        try:
            reap(store, settings)
        except Exception:  # a database or broker hiccup: try again next round
            log.warning("reaper round failed", exc_info=True)
    try:
        store.forget_worker(name)
    except Exception:
        log.warning("could not remove this worker's registry row", exc_info=True)


@worker_ready.connect
def _start_reaper(sender: Any = None, **_: Any) -> None:
    settings = get_settings()
    name = str(getattr(sender, "hostname", None) or worker_name())
    _registry_name[0] = name
    threading.Thread(target=_reap_forever, args=(settings, name), name="reaper",
                     daemon=True).start()
    log.info("reaper started: every %.1f s, stale after %g s, lost messages after %g s",
             reap_interval(settings), settings.heartbeat_timeout_s,
             settings.requeue_queued_after_s)


@worker_shutting_down.connect
def _stop(**_: Any) -> None:
    _stop_reaper.set()
    if _registry_name[0]:  # the reaper thread may not get to it before the process exits
        try:
            resources(get_settings())[0].forget_worker(_registry_name[0])
        except Exception:
            log.warning("could not remove this worker's registry row", exc_info=True)


@worker_process_init.connect
def _init_child(**_: Any) -> None:
    die_with_parent()
    limit_threads(get_settings(), int(app.conf.worker_concurrency or 1))
