"""The job store's sweeps and job logs, kept apart from jobs/store.py's job life cycle.

`JobStore` inherits these; they use only its `session()`.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import datetime, timezone
from typing import Any, NamedTuple

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from spartan_service.jobs.db import new_id, owned, page
from spartan_service.jobs.models import Job, JobLog, Sweep, utcnow

# A job's log is bounded: this many records, then only errors (a failure's traceback comes
# last) up to ERRORS_AFTER_LIMIT more; a record's message is cut to MESSAGE_CHARS.
MAX_LOG_RECORDS = 1000
ERRORS_AFTER_LIMIT = 50
MESSAGE_CHARS = 16_000
ERROR_LEVELS = ("ERROR", "CRITICAL")


class JobState(NamedTuple):
    id: str
    status: str
    error: str | None
    finished_at: datetime | None


class SweepsAndLogs:
    def session(self) -> AbstractContextManager[Session]:
        raise NotImplementedError

    # sweeps
    def create_sweep(
        self, tenant: str, name: str | None, spec: dict[str, Any], budgets: list[float],
        points: Sequence[tuple[dict[str, Any], dict[str, Any], str, str | None, list[str]]],
        sweep_id: str | None = None,
    ) -> tuple[Sweep, list[Job]]:
        """The sweep and one queued job per point (key, spec, queue, name, warnings), in one
        transaction: a sweep never exists with only some of its jobs."""
        now = utcnow()
        sweep_id = sweep_id or new_id()
        jobs = [Job(id=new_id(), tenant=tenant, name=job_name, status="queued", queue=queue,
                    spec=job_spec, progress={"step": 0, "total_steps": None}, metrics={},
                    warnings=warnings, attempts=0, cancel_requested=False, created_at=now,
                    updated_at=now)
                for _key, job_spec, queue, job_name, warnings in points]
        keys = [{**point[0], "job_id": job.id} for point, job in zip(points, jobs, strict=True)]
        sweep = Sweep(id=sweep_id, tenant=tenant, name=name, spec=spec, budgets=budgets,
                      points=keys, cancel_requested=False, created_at=now)
        with self.session() as s:
            s.add(sweep)
            s.add_all(jobs)
        return sweep, jobs

    def get_sweep(self, sweep_id: str, tenant: str | None = None) -> Sweep | None:
        with self.session() as s:
            return owned(s, Sweep, sweep_id, tenant)

    def list_sweeps(self, tenant: str | None = None, limit: int = 50, offset: int = 0
                    ) -> tuple[list[Sweep], int]:
        query = select(Sweep)
        if tenant is not None:
            query = query.where(Sweep.tenant == tenant)
        with self.session() as s:
            return page(s, query, Sweep.created_at.desc(), Sweep.id, limit=limit, offset=offset)

    def mark_sweep_cancelled(self, sweep_id: str) -> None:
        with self.session() as s:
            row = s.get(Sweep, sweep_id)
            if row is not None:
                row.cancel_requested = True

    def job_states(self, job_ids: Sequence[str]) -> dict[str, JobState]:
        """Status, error and end time of the jobs of these ids, one query per 500 (no tenant
        check: callers hold ids of their own sweep). Only these columns: a finished job's
        metrics and spec are large, and a sweep page asks every 2 s."""
        out: dict[str, JobState] = {}
        with self.session() as s:
            for start in range(0, len(job_ids), 500):
                chunk = list(job_ids[start:start + 500])
                rows = s.execute(select(Job.id, Job.status, Job.error, Job.finished_at)
                                 .where(Job.id.in_(chunk)))
                out.update((row.id, JobState(*row)) for row in rows)
        return out

    # for /metrics
    def job_counts(self) -> list[tuple[str, str, str, int]]:
        """(kind, status, queue, number of jobs) over all tenants."""
        with self.session() as s:
            rows = s.execute(select(Job.kind, Job.status, Job.queue, func.count())
                             .group_by(Job.kind, Job.status, Job.queue)).all()
            return [(kind, status, queue, int(n)) for kind, status, queue, n in rows]

    def worker_heartbeats(self) -> dict[str, datetime]:
        """The latest heartbeat of each worker running a job."""
        with self.session() as s:
            rows = s.execute(select(Job.worker, func.max(Job.heartbeat_at))
                             .where(Job.status == "running", Job.worker.is_not(None))
                             .group_by(Job.worker)).all()
        # max() of a timezone-aware column comes back naive on SQLite: UTC either way.
        return {str(w): (t if t.tzinfo else t.replace(tzinfo=timezone.utc))
                for w, t in rows if t is not None}

    # job logs
    def append_logs(self, job_id: str, attempt: int, records: Sequence[dict[str, Any]]) -> int:
        """Store log records ({created_at, level, logger, message}) of a job within its bound;
        returns how many were kept."""
        if not records:
            return 0
        with self.session() as s:
            have = s.scalar(select(func.count()).where(JobLog.job_id == job_id)) or 0
            kept = 0
            for record in records:
                level = str(record.get("level", "INFO"))[:16]
                if have >= MAX_LOG_RECORDS + ERRORS_AFTER_LIMIT:
                    break
                if have >= MAX_LOG_RECORDS and level not in ERROR_LEVELS:
                    continue
                message = str(record.get("message", ""))
                if len(message) > MESSAGE_CHARS:
                    cut = len(message) - MESSAGE_CHARS
                    # The end of a traceback names the error: keep head and tail.
                    message = (message[:MESSAGE_CHARS // 4] + f"\n[... {cut} characters cut]\n"
                               + message[-(MESSAGE_CHARS * 3 // 4):])
                s.add(JobLog(job_id=job_id, attempt=attempt,
                             created_at=record.get("created_at") or utcnow(), level=level,
                             logger=str(record.get("logger", ""))[:200],
                             message=message.replace("\x00", "")))
                have += 1
                kept += 1
            return kept

    def job_logs(self, job_id: str, since: int = 0, limit: int = 1000
                 ) -> tuple[list[JobLog], int]:
        """Records with id > since, oldest first, and how many there are after `since`."""
        query = select(JobLog).where(JobLog.job_id == job_id, JobLog.id > since)
        with self.session() as s:
            return page(s, query, JobLog.id, limit=limit)
