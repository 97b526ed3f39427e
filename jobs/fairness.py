"""Fair turns between tenants on a queue, decided when a worker is about to claim a job.

Workers take messages first in, first out: one tenant's hundred long jobs would hold every
worker of the queue until they are done. Before claiming, a worker asks whether another
tenant with jobs waiting on the same queue deserves the turn more: the tenant with fewer jobs
running on the queue, and on a tie the one whose last job started longer ago (never first).
If so, the job's message goes to the back of the queue and the worker takes the next one, so
tenants alternate however many jobs each has queued.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import func, select

from spartan_service.jobs.models import Job

_NEVER = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _aware(value: datetime | None) -> datetime:
    if value is None:
        return _NEVER
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


def tenant_ahead(store: Any, job_id: str) -> str | None:
    """The tenant whose waiting job should run before `job_id`, or None: the job may run now
    (it is this tenant's turn, no other tenant waits, or the job is not queued)."""
    with store.session() as s:
        job = s.get(Job, job_id)
        if job is None or job.status != "queued":
            return None
        waiting = set(s.scalars(
            select(Job.tenant).distinct().where(
                Job.queue == job.queue, Job.status == "queued",
                Job.cancel_requested.is_(False), Job.tenant != job.tenant)))
        if not waiting:
            return None  # the usual case: one query, nothing to weigh
        tenants = [job.tenant, *sorted(waiting)]
        running = dict(s.execute(
            select(Job.tenant, func.count()).where(
                Job.queue == job.queue, Job.status == "running", Job.tenant.in_(tenants))
            .group_by(Job.tenant)).all())
        started = dict(s.execute(
            select(Job.tenant, func.max(Job.started_at)).where(
                Job.queue == job.queue, Job.tenant.in_(tenants))
            .group_by(Job.tenant)).all())

    def turn(tenant: str) -> tuple[int, datetime]:
        return int(running.get(tenant, 0)), _aware(started.get(tenant))

    first = min(sorted(waiting), key=turn)
    return first if turn(first) < turn(job.tenant) else None
