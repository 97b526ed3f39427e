"""The job store: jobs, sweeps, cost models and uploads in SQLite (default) or PostgreSQL.

Every state change is one short transaction; transitions are conditional UPDATEs so that two
workers (or a worker and a cancel request) cannot both win.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, delete, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from spartan_service.jobs.db import (
    make_engine,
    migrate,
    new_id,
    owned,
    page,
    plausible_id,
    visible,
)
from spartan_service.jobs.fields import bounded_warnings
from spartan_service.jobs.models import Job, JobLog, utcnow
from spartan_service.jobs.registry import WorkerRegistry
from spartan_service.jobs.status import TERMINAL, JobStatus
from spartan_service.jobs.store_assets import CostModelsAndUploads
from spartan_service.jobs.store_extra import SweepsAndLogs

__all__ = ["JobStore", "lost_reason", "new_id", "utcnow"]  # what callers import from here

_JOB_BY_ID = select(Job.__table__).where(Job.__table__.c.id == bindparam("job_id"))
OUT_OF_MEMORY = "(most likely out of memory)"


def lost_reason(warnings: list[str] | None) -> str:
    """What the record says of how its worker processes died, for the final error."""
    killed = [w for w in warnings or [] if "was killed by SIG" in w]
    if not killed:
        return ""
    if any(OUT_OF_MEMORY in w for w in killed):
        return (f" ({len(killed)} time(s) its process was killed by SIGKILL, most likely out "
                "of memory: lower training.batch_size or the model's size)")
    return f" ({killed[-1].split(': ', 1)[-1]})"


class JobStore(SweepsAndLogs, CostModelsAndUploads, WorkerRegistry):
    """Jobs' life cycle here; sweeps and logs, cost models and uploads, and the worker
    registry in the sections it inherits (each reads rows for a tenant through db.owned)."""

    def __init__(self, url: str, *, create: bool = True) -> None:
        self.engine = make_engine(url)
        if create:
            migrate(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # Reads of one row take ~0.1 ms on SQLite (a local file, WAL: never blocked by a
        # writer): the API may run them on its event loop instead of a thread.
        self.inline_reads = self.engine.dialect.name == "sqlite"

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions.begin() as s:
            yield s

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(select(1))

    def close(self) -> None:
        self.engine.dispose()

    # jobs
    def create_job(
        self, tenant: str, spec: dict[str, Any], queue: str, name: str | None,
        warnings: list[str] | None = None, kind: str = "train",
    ) -> Job:
        now = utcnow()
        job = Job(
            id=new_id(), tenant=tenant, kind=kind, name=name, status=JobStatus.queued,
            queue=queue, spec=spec, progress={"step": 0, "total_steps": None}, metrics={},
            warnings=bounded_warnings(warnings or []),
            attempts=0, cancel_requested=False, created_at=now, updated_at=now,
        )
        with self.session() as s:
            s.add(job)
        return job

    def get_job(self, job_id: str, tenant: str | None = None, kind: str | None = None
                ) -> Job | None:
        with self.session() as s:
            return owned(s, Job, job_id, tenant, kind)

    def job_view(self, job_id: str, tenant: str | None = None, kind: str | None = None
                 ) -> Any | None:
        """A job's columns, read-only (a Row, with the same attribute names as Job), for the
        API's status GET, its hottest path: one Core SELECT on a pooled connection, without
        the ORM's session, identity map and unit of work."""
        if not plausible_id(job_id):
            return None
        with self.engine.connect() as conn:
            row = conn.execute(_JOB_BY_ID, {"job_id": job_id}).first()
        return row if row is not None and visible(row, tenant, kind) else None

    def list_jobs(
        self, tenant: str | None = None, status: str | None = None, limit: int = 50,
        offset: int = 0, kind: str | None = None,
    ) -> tuple[list[Job], int]:
        query = select(Job)
        if tenant is not None:
            query = query.where(Job.tenant == tenant)
        if kind is not None:
            query = query.where(Job.kind == kind)
        if status is not None:
            query = query.where(Job.status == status)
        with self.session() as s:
            return page(s, query, Job.created_at.desc(), Job.id, limit=limit, offset=offset)

    def claim_job(
        self, job_id: str, worker: str, max_attempts: int, *, stale_after_s: float | None = None,
    ) -> Job | None:
        """queued -> running for this worker (the reaper puts a job whose worker died back to
        queued). With stale_after_s, also takes over a running job whose heartbeat is older
        than that. Returns None when the job is not there to run: finished, cancelled, out of
        attempts, or running under a live worker (a duplicate delivery).

        One conditional UPDATE, so of several workers claiming at once exactly one wins, on
        SQLite (which ignores FOR UPDATE) as on PostgreSQL.
        """
        now = utcnow()
        claimable = Job.status == JobStatus.queued
        if stale_after_s is not None:
            limit = now - timedelta(seconds=stale_after_s)
            claimable = or_(claimable, and_(Job.status == JobStatus.running, or_(
                Job.heartbeat_at.is_(None), Job.heartbeat_at < limit)))
        with self.session() as s:
            won = s.execute(
                update(Job)
                .where(Job.id == job_id, claimable, Job.cancel_requested.is_(False),
                       Job.attempts < max_attempts)
                .values(status=JobStatus.running, attempts=Job.attempts + 1, worker=worker,
                        started_at=func.coalesce(Job.started_at, now), heartbeat_at=now,
                        updated_at=now)
                .execution_options(synchronize_session=False)
            ).rowcount  # type: ignore[attr-defined]
            if won:
                return s.get(Job, job_id, populate_existing=True)
            job = s.get(Job, job_id)
            if job is None or job.status in TERMINAL:
                return None
            # Only a job nobody runs is ended here; a live worker ends its own.
            if job.cancel_requested:
                self._finish_where(s, job_id, JobStatus.cancelled, None, now, extra=(claimable,))
            elif job.attempts >= max_attempts:
                self._finish_where(
                    s, job_id, JobStatus.failed,
                    f"gave up after {job.attempts} attempts: the worker was lost each time"
                    + lost_reason(job.warnings), now,
                    extra=(claimable, Job.attempts >= max_attempts),
                )
            return None

    def heartbeat(
        self, job_id: str, progress: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None, resumed_from_step: int | None = None,
        *, worker: str | None = None,
    ) -> bool:
        """Store progress; returns True when the job should stop: a cancel was requested, or
        (when `worker` is given) the job no longer runs under this worker (the reaper gave it
        to another one, or it was finished). Progress is only written by its owner."""
        now = utcnow()
        values: dict[str, Any] = {"heartbeat_at": now, "updated_at": now}
        if progress is not None:
            values["progress"] = progress
        if metrics is not None:
            values["metrics"] = metrics
        if resumed_from_step is not None:
            values["resumed_from_step"] = resumed_from_step
        owned = [Job.id == job_id, Job.status == JobStatus.running]
        if worker is not None:
            owned.append(Job.worker == worker)
        with self.session() as s:
            hit = s.execute(
                update(Job).where(*owned).values(**values)
                .execution_options(synchronize_session=False)
            ).rowcount  # type: ignore[attr-defined]
            if worker is not None and not hit:
                return True
            return bool(s.scalar(select(Job.cancel_requested).where(Job.id == job_id)))

    def finish_job(
        self, job_id: str, status: JobStatus | str, error: str | None = None,
        metrics: dict[str, Any] | None = None, progress: dict[str, Any] | None = None,
        *, worker: str | None = None,
    ) -> bool:
        """Move a job to a final status unless it already has one; with `worker`, only while
        it runs under that worker. Returns whether this call finished it."""
        if status not in TERMINAL:
            raise ValueError(f"not a final status: {status}")
        status = JobStatus(status)
        extra: list[Any] = []
        if worker is not None:
            extra += [Job.status == JobStatus.running, Job.worker == worker]
        with self.session() as s:
            return self._finish_where(s, job_id, status, error, utcnow(), metrics=metrics,
                                      progress=progress, extra=tuple(extra))

    @staticmethod
    def _finish_where(
        s: Session, job_id: str, status: JobStatus, error: str | None, now: datetime, *,
        metrics: dict[str, Any] | None = None, progress: dict[str, Any] | None = None,
        extra: tuple[Any, ...] = (),
    ) -> bool:
        values: dict[str, Any] = {"status": status, "error": error, "finished_at": now,
                                  "updated_at": now}
        if metrics is not None:
            values["metrics"] = metrics
        if progress is not None:
            values["progress"] = progress
        hit = s.execute(
            update(Job).where(Job.id == job_id, Job.status.not_in(TERMINAL), *extra)
            .values(**values).execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
        return bool(hit)

    def add_warning(self, job_id: str, text: str) -> None:
        """Append a warning to a job's record (once: the same text is not added twice)."""
        with self.session() as s:
            job = s.get(Job, job_id, with_for_update=True)
            if job is not None and text not in (job.warnings or []):
                job.warnings = [*(job.warnings or []), text]
                job.updated_at = utcnow()

    def request_cancel(self, job_id: str, tenant: str | None = None, kind: str | None = None
                       ) -> Job | None:
        """A queued job is cancelled at once; a running one when its worker next reports."""
        with self.session() as s:
            job = owned(s, Job, job_id, tenant, kind)
            if job is None or job.status in TERMINAL:
                return job
            now = utcnow()
            s.execute(
                update(Job).where(Job.id == job_id, Job.status.not_in(TERMINAL))
                .values(cancel_requested=True, updated_at=now)
                .execution_options(synchronize_session=False)
            )
            self._finish_where(s, job_id, JobStatus.cancelled, None, now,
                               extra=(Job.status == JobStatus.queued,))
            return s.get(Job, job_id, populate_existing=True)

    def delete_job(self, job_id: str, tenant: str | None = None, kind: str | None = None
                   ) -> Job | None:
        """Remove a finished job's record (the caller removes its artifacts). Returns the job
        as it was; a job still queued or running is returned and kept; None when there is no
        such job (of this tenant, of this kind)."""
        with self.session() as s:
            job = owned(s, Job, job_id, tenant, kind)
            if job is not None and job.status in TERMINAL:
                s.delete(job)
                s.execute(delete(JobLog).where(JobLog.job_id == job_id))
            return job

    def stale_jobs(self, timeout_s: float) -> list[Job]:
        """Running jobs whose worker has not reported for timeout_s seconds."""
        limit = utcnow() - timedelta(seconds=timeout_s)
        with self.session() as s:
            rows = s.scalars(
                select(Job).where(
                    Job.status == JobStatus.running,
                    or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < limit),
                )
            ).all()
            return list(rows)

    def requeue(self, job_id: str, heartbeat_before: datetime | None) -> bool:
        """running -> queued for a job whose worker was lost (only if still stale)."""
        with self.session() as s:
            result = s.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == JobStatus.running,
                       Job.heartbeat_at == heartbeat_before)
                .values(status=JobStatus.queued, worker=None, updated_at=utcnow())
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def waiting_jobs(self, older_than_s: float) -> list[Job]:
        """Queued jobs that have waited older_than_s seconds since they were (re)queued."""
        limit = utcnow() - timedelta(seconds=older_than_s)
        with self.session() as s:
            rows = s.scalars(
                select(Job).where(Job.status == JobStatus.queued, Job.cancel_requested.is_(False),
                                  Job.updated_at < limit)
                .order_by(Job.updated_at)
            ).all()
            return list(rows)

    def note_process_killed(self, pid: int, signal_name: str) -> str | None:
        """A worker's job process (pid) died of a signal: say so in the record of the job it
        ran (its `worker` name holds the pid, worker.runner.worker_name). Returns its id."""
        note = f"its worker process (pid {pid}) was killed by {signal_name}"
        if signal_name == "SIGKILL":
            note += (f" {OUT_OF_MEMORY}: the kernel's OOM killer sends SIGKILL; lower "
                     "training.batch_size or the model's size, or give the worker more memory")
        with self.session() as s:
            job = s.scalars(select(Job).where(Job.status == JobStatus.running,
                                              Job.worker.like(f"%/{pid}/%"))).first()
            if job is None:
                return None
            s.execute(update(Job).where(Job.id == job.id).values(
                warnings=bounded_warnings([*(job.warnings or []),
                                           f"attempt {job.attempts}: {note}"]))
                .execution_options(synchronize_session=False))
            return job.id

    def note_queued_warning(self, job_id: str, note: str, marker: str) -> bool:
        """Add `note` to a queued job's warnings unless one containing `marker` is there."""
        with self.session() as s:
            job = s.get(Job, job_id)
            if job is None or job.status != JobStatus.queued:
                return False
            if any(marker in w for w in job.warnings or []):
                return False
            hit = s.execute(
                update(Job).where(Job.id == job_id, Job.status == JobStatus.queued)
                .values(warnings=bounded_warnings([*(job.warnings or []), note]))
                .execution_options(synchronize_session=False)
            ).rowcount  # type: ignore[attr-defined]
            return bool(hit)

    def note_reenqueued(self, job_id: str, queued_since: datetime, note: str) -> bool:
        """Record that a queued job's message was sent again: `note` joins its warnings and
        its queued-since time restarts. Only while it is still queued since `queued_since`,
        so of several reapers one records it (a second message is dropped by the claim)."""
        with self.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                return False
            hit = s.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == JobStatus.queued,
                       Job.updated_at == queued_since)
                .values(warnings=bounded_warnings([*(job.warnings or []), note]),
                        updated_at=utcnow())
                .execution_options(synchronize_session=False)
            ).rowcount  # type: ignore[attr-defined]
            return bool(hit)
