"""The job store: jobs, cost models and uploads in SQLite (default) or PostgreSQL.

Every state change is one short transaction; transitions are conditional UPDATEs so that two
workers (or a worker and a cancel request) cannot both win.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    Engine,
    and_,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from spartan_service.jobs.fields import bounded_warnings
from spartan_service.jobs.models import CostModel, DeploymentPoint, Job, JobLog, Upload, utcnow
from spartan_service.jobs.registry import WorkerRegistry
from spartan_service.jobs.status import TERMINAL, JobStatus
from spartan_service.jobs.store_extra import SweepsAndLogs

MIGRATIONS = Path(__file__).parent / "migrations"


def new_id() -> str:
    return uuid.uuid4().hex


_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def plausible_id(value: str) -> bool:
    """Ids are ours (hex); anything else names nothing, and is never sent to the database
    (PostgreSQL refuses NUL characters with an error, not an empty result)."""
    return _ID.fullmatch(value) is not None


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # A pooled connection per threadpool thread (anyio runs 40): past the default pool
        # of 5 + 10, each request would open a connection and run the pragmas below again.
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False},
                               pool_size=40, max_overflow=10)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(conn: Any, _record: Any) -> None:
            # WAL lets the API read while a worker writes progress.
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def migrate(engine: Engine) -> None:
    """Create or upgrade the schema to the newest Alembic revision."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


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


class JobStore(SweepsAndLogs, WorkerRegistry):
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
        if not plausible_id(job_id):
            return None
        with self.session() as s:
            job = s.get(Job, job_id)
            if job is None or (tenant is not None and job.tenant != tenant):
                return None
            if kind is not None and job.kind != kind:
                return None
            return job

    def job_view(self, job_id: str, tenant: str | None = None, kind: str | None = None
                 ) -> Any | None:
        """A job's columns, read-only (a Row, with the same attribute names as Job), for the
        API's status GET, its hottest path: one Core SELECT on a pooled connection, without
        the ORM's session, identity map and unit of work."""
        if not plausible_id(job_id):
            return None
        with self.engine.connect() as conn:
            row = conn.execute(_JOB_BY_ID, {"job_id": job_id}).first()
        if row is None or (tenant is not None and row.tenant != tenant):
            return None
        if kind is not None and row.kind != kind:
            return None
        return row

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
            count = s.scalar(select(func.count()).select_from(query.subquery())) or 0
            rows = s.scalars(
                query.order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset)
            ).all()
            return list(rows), int(count)

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
        if not plausible_id(job_id):
            return None
        with self.session() as s:
            job = s.get(Job, job_id)
            if job is None or (tenant is not None and job.tenant != tenant):
                return None
            if kind is not None and job.kind != kind:
                return None
            if job.status in TERMINAL:
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
        if not plausible_id(job_id):
            return None
        with self.session() as s:
            job = s.get(Job, job_id)
            if job is None or (tenant is not None and job.tenant != tenant):
                return None
            if kind is not None and job.kind != kind:
                return None
            if job.status in TERMINAL:
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

    # cost models
    def create_cost_model(
        self, tenant: str, data: dict[str, Any], profile: dict[str, Any] | None,
        name: str | None, *, hardware: dict[str, Any] | None = None,
        fingerprint: str | None = None, hardware_label: str | None = None,
        batch: int | None = None, source: str = "upload", parent_id: str | None = None,
        profile_job_id: str | None = None, refit: dict[str, Any] | None = None,
    ) -> CostModel:
        """Store a cost model as the next version of `name` (version 1 when unnamed). Two
        writers racing for one version: the unique (tenant, name, version) lets one win and
        the other takes the next number."""
        for _ in range(20):
            row = CostModel(
                id=new_id(), tenant=tenant, name=name, data=data, profile=profile,
                created_at=utcnow(), version=1, hardware=hardware, fingerprint=fingerprint,
                hardware_label=hardware_label, batch=batch, source=source, parent_id=parent_id,
                profile_job_id=profile_job_id, refit=refit)
            try:
                with self.session() as s:
                    if name is not None:
                        top = s.scalar(select(func.max(CostModel.version)).where(
                            CostModel.tenant == tenant, CostModel.name == name))
                        row.version = int(top or 0) + 1
                    s.add(row)
                return row
            except IntegrityError:
                continue
        raise RuntimeError(f"could not allocate a version of cost model {name!r}")

    def get_cost_model(self, model_id: str, tenant: str | None = None) -> CostModel | None:
        if not plausible_id(model_id):
            return None
        with self.session() as s:
            row = s.get(CostModel, model_id)
            if row is None or (tenant is not None and row.tenant != tenant):
                return None
            return row

    def list_cost_models(
        self, tenant: str | None = None, limit: int = 50, offset: int = 0,
        hardware: str | None = None, name: str | None = None,
    ) -> tuple[list[CostModel], int]:
        """Newest first. `hardware`: a fingerprint, or text found (any case) in the hardware
        label, e.g. 'EPYC' or 'H200'."""
        query = select(CostModel)
        if tenant is not None:
            query = query.where(CostModel.tenant == tenant)
        if name is not None:
            query = query.where(CostModel.name == name)
        if hardware:
            query = query.where(or_(
                CostModel.fingerprint == hardware.lower(),
                func.lower(CostModel.hardware_label).contains(hardware.lower(),
                                                              autoescape=True)))
        with self.session() as s:
            count = s.scalar(select(func.count()).select_from(query.subquery())) or 0
            rows = s.scalars(
                query.order_by(CostModel.created_at.desc(), CostModel.version.desc())
                .limit(limit).offset(offset)
            ).all()
            return list(rows), int(count)

    def cost_model_versions(self, tenant: str, name: str) -> list[CostModel]:
        """Every version of a named cost model, newest first."""
        with self.session() as s:
            return list(s.scalars(
                select(CostModel).where(CostModel.tenant == tenant, CostModel.name == name)
                .order_by(CostModel.version.desc())).all())

    def profile_job_cost_models(self, job_id: str) -> list[CostModel]:
        with self.session() as s:
            return list(s.scalars(
                select(CostModel).where(CostModel.profile_job_id == job_id)
                .order_by(CostModel.version)).all())

    # deployment points (measured latency of trained models beside the prediction)
    def add_deployment_point(
        self, cost_model_id: str, tenant: str, job_id: str, batch: int, predicted: float,
        measured: float, layers: list[dict[str, Any]], fingerprint: str | None,
    ) -> DeploymentPoint:
        """One per (cost model, job, batch): a retried job replaces its earlier point."""
        row = DeploymentPoint(
            id=new_id(), cost_model_id=cost_model_id, tenant=tenant, job_id=job_id,
            batch=batch, predicted=predicted, measured=measured, layers=layers,
            fingerprint=fingerprint, created_at=utcnow())
        with self.session() as s:
            for old in s.scalars(select(DeploymentPoint).where(
                    DeploymentPoint.cost_model_id == cost_model_id,
                    DeploymentPoint.job_id == job_id, DeploymentPoint.batch == batch)):
                s.delete(old)
            s.add(row)
        return row

    def deployment_points(self, cost_model_ids: list[str]) -> list[DeploymentPoint]:
        if not cost_model_ids:
            return []
        with self.session() as s:
            return list(s.scalars(
                select(DeploymentPoint)
                .where(DeploymentPoint.cost_model_id.in_(cost_model_ids))
                .order_by(DeploymentPoint.created_at)).all())

    # uploads
    def create_upload(
        self, tenant: str, filename: str, kind: str, size: int, sha256: str,
        tensors: dict[str, Any], upload_id: str | None = None,
    ) -> Upload:
        row = Upload(id=upload_id or new_id(), tenant=tenant, filename=filename, kind=kind,
                     size=size, sha256=sha256, tensors=tensors, created_at=utcnow())
        with self.session() as s:
            s.add(row)
        return row

    def get_upload(self, upload_id: str, tenant: str | None = None) -> Upload | None:
        if not plausible_id(upload_id):
            return None
        with self.session() as s:
            row = s.get(Upload, upload_id)
            if row is None or (tenant is not None and row.tenant != tenant):
                return None
            return row

    def list_uploads(
        self, tenant: str | None = None, limit: int = 50, offset: int = 0
    ) -> tuple[list[Upload], int]:
        query = select(Upload)
        if tenant is not None:
            query = query.where(Upload.tenant == tenant)
        with self.session() as s:
            count = s.scalar(select(func.count()).select_from(query.subquery())) or 0
            rows = s.scalars(
                query.order_by(Upload.created_at.desc(), Upload.id).limit(limit).offset(offset)
            ).all()
            return list(rows), int(count)

    def upload_bytes(self, tenant: str) -> int:
        """What a tenant's uploads hold, for its quota."""
        with self.session() as s:
            return int(s.scalar(select(func.coalesce(func.sum(Upload.size), 0))
                                .where(Upload.tenant == tenant)) or 0)

    def upload_ids(self) -> set[str]:
        with self.session() as s:
            return set(s.scalars(select(Upload.id)).all())

    def delete_upload(self, upload_id: str, tenant: str | None = None) -> Upload | None:
        """Remove the record (the caller removes the file); None when there is none."""
        if not plausible_id(upload_id):
            return None
        with self.session() as s:
            row = s.get(Upload, upload_id)
            if row is None or (tenant is not None and row.tenant != tenant):
                return None
            s.delete(row)
            return row
