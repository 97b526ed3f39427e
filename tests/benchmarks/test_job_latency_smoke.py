"""Smoke test of the job latency benchmark's arithmetic (the processes it starts are covered by
tests/worker/test_celery_worker.py)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from benchmarks.job_latency import gaps
from spartan_service.jobs.models import Job


def _job(start: float, end: float) -> Job:
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    return Job(created_at=t0, started_at=t0 + timedelta(seconds=start),
               finished_at=t0 + timedelta(seconds=end))


def test_gaps_follow_start_order() -> None:
    jobs = [_job(2.5, 3.0), _job(0.0, 1.0), _job(1.25, 2.0)]
    assert gaps(jobs) == [0.25, 0.5]
