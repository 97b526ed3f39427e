"""The reaper: jobs whose worker stopped heartbeating go back to their queue, or end."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import update

from spartan_service.jobs.models import Job, utcnow
from spartan_service.jobs.settings import Settings
from spartan_service.jobs.store import JobStore
from spartan_service.worker.tasks import fits_here, reap

SPEC = {"model": {"arch": "mlp"}}


class FakeApp:
    """Records what would be sent to the broker."""

    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple[str, list[Any], str]] = []
        self.fail = fail

    def send_task(self, name: str, args: list[Any], queue: str) -> None:
        if self.fail:
            raise ConnectionError("broker down")
        self.sent.append((name, args, queue))


def running_job(store: JobStore, age_s: float, queue: str = "cpu") -> str:
    job_id = store.create_job("t", SPEC, queue, None).id
    store.claim_job(job_id, "w", 3)
    with store.session() as s:
        s.execute(update(Job).where(Job.id == job_id)
                  .values(heartbeat_at=utcnow() - timedelta(seconds=age_s)))
    return job_id


def test_stale_jobs_are_requeued_and_fresh_ones_left(store: JobStore, settings: Settings) -> None:
    stale, fresh = running_job(store, 120, queue="gpu"), running_job(store, 1)
    app = FakeApp()
    assert reap(store, settings, app=app) == [stale]  # type: ignore[arg-type]
    assert app.sent == [("spartan.run_job", [stale], "gpu")]
    job = store.get_job(stale)
    assert job is not None and job.status == "queued" and job.attempts == 1
    assert store.get_job(fresh).status == "running"  # type: ignore[union-attr]
    assert reap(store, settings, app=app) == []  # nothing twice
    resumed = store.claim_job(stale, "w2", settings.max_attempts)
    assert resumed is not None and resumed.attempts == 2


def test_broker_down_changes_nothing_until_a_later_round(store: JobStore,
                                                         settings: Settings) -> None:
    stale = running_job(store, 120)
    assert reap(store, settings, app=FakeApp(fail=True)) == []  # type: ignore[arg-type]
    assert store.get_job(stale).status == "running"  # type: ignore[union-attr]
    assert reap(store, settings, app=FakeApp()) == [stale]  # type: ignore[arg-type]


def test_jobs_out_of_attempts_fail_and_cancelled_ones_end(store: JobStore,
                                                          settings: Settings) -> None:
    doomed = running_job(store, 120)
    with store.session() as s:
        s.execute(update(Job).where(Job.id == doomed).values(attempts=settings.max_attempts))
    cancelled = running_job(store, 120)
    store.request_cancel(cancelled)
    app = FakeApp()
    assert reap(store, settings, app=app) == []  # type: ignore[arg-type]
    assert app.sent == []
    job = store.get_job(doomed)
    assert job is not None and job.status == "failed"
    assert job.error is not None and "gave up after 3 attempts" in job.error
    assert store.get_job(cancelled).status == "cancelled"  # type: ignore[union-attr]


def test_a_job_needing_more_ranks_than_this_worker_has_goes_back_to_its_queue(
        store: JobStore, settings: Settings) -> None:
    small = settings.model_copy(update={"worker_processes": 2})
    big = store.create_job("t", {**SPEC, "resources": {"processes": 4}}, "cpu", None).id
    fine = store.create_job("t", {**SPEC, "resources": {"processes": 2}}, "cpu", None).id
    app = FakeApp()
    assert not fits_here(store, big, small, app=app, pause_s=0)  # type: ignore[arg-type]
    assert app.sent == [("spartan.run_job", [big], "cpu")]
    job = store.get_job(big)
    assert job is not None and job.status == "queued" and job.attempts == 0  # not claimed
    assert fits_here(store, fine, small, app=app, pause_s=0)  # type: ignore[arg-type]
    assert len(app.sent) == 1
