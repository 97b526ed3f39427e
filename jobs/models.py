"""Tables of the job store (SQLAlchemy 2). The schema is created and migrated with Alembic."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, Integer, String, Text, UniqueConstraint
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from spartan_service.jobs.status import JobStatus


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite returns naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


class StatusType(TypeDecorator[JobStatus]):
    """A job's status: stored as its plain name, read back as a JobStatus."""

    impl = String(16)
    cache_ok = True

    def process_bind_param(self, value: JobStatus | str | None, dialect: Dialect) -> str | None:
        return None if value is None else JobStatus(value).value

    def process_result_value(self, value: str | None, dialect: Dialect) -> JobStatus | None:
        return None if value is None else JobStatus(value)


class Base(DeclarativeBase):
    pass


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(100), index=True)
    # "train" (a sparse-training job) or "profile" (a profile job, jobs.profile_spec): both
    # share the claim, heartbeat, reaper, cancel and attempt machinery of this table.
    kind: Mapped[str] = mapped_column(String(16), index=True, default="train")
    name: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[JobStatus] = mapped_column(StatusType(), index=True)
    queue: Mapped[str] = mapped_column(String(16))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    progress: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    warnings: Mapped[list[str]] = mapped_column(JSON, default=list)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    resumed_from_step: Mapped[int | None] = mapped_column(Integer)
    worker: Mapped[str | None] = mapped_column(String(200))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class CostModel(Base):
    """A fitted cost model. Versions: every model registered, profiled or refitted under a
    name gets the next version of that name (per tenant); `hardware` is where it was measured
    and `fingerprint` the hash of the parts of it that decide whether it applies elsewhere."""

    __tablename__ = "cost_models"
    __table_args__ = (UniqueConstraint("tenant", "name", "version",
                                       name="uq_cost_models_tenant_name_version"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(100), index=True)
    name: Mapped[str | None] = mapped_column(String(200))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    profile: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    version: Mapped[int] = mapped_column(Integer, default=1)
    hardware: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    fingerprint: Mapped[str | None] = mapped_column(String(64), index=True)
    hardware_label: Mapped[str | None] = mapped_column(String(400))
    batch: Mapped[int | None] = mapped_column(Integer)
    # "upload" (POST /v1/cost-models), "profile" (a profile job), "refit" (of parent_id)
    source: Mapped[str] = mapped_column(String(16), default="upload")
    parent_id: Mapped[str | None] = mapped_column(String(32))
    profile_job_id: Mapped[str | None] = mapped_column(String(32), index=True)
    refit: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class DeploymentPoint(Base):
    """One deployed model measured against a cost model's prediction: after training, the
    worker times the exported model (whole and per layer) at the cost model's batch size.
    Held-out points: the cost model never saw them when it was fitted."""

    __tablename__ = "deployment_points"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    cost_model_id: Mapped[str] = mapped_column(String(32), index=True)
    tenant: Mapped[str] = mapped_column(String(100), index=True)
    job_id: Mapped[str] = mapped_column(String(32))
    batch: Mapped[int] = mapped_column(Integer)
    predicted: Mapped[float] = mapped_column(Float)
    measured: Mapped[float] = mapped_column(Float)
    # [{"name", "nnz_blocks", "predicted", "measured"}] for every cost-model layer
    layers: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    fingerprint: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Upload(Base):
    __tablename__ = "uploads"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(100), index=True)
    filename: Mapped[str] = mapped_column(String(300))
    kind: Mapped[str] = mapped_column(String(16))
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    tensors: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Sweep(Base):
    """Jobs of one base spec at several budgets; `points` lists them in order as
    [{"budget", "method", "structure", "job_id"}]."""

    __tablename__ = "sweeps"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(100), index=True)
    name: Mapped[str | None] = mapped_column(String(200))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    budgets: Mapped[list[float]] = mapped_column(JSON)
    points: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class JobLog(Base):
    """One log record a worker wrote while running a job (warnings, errors with traceback)."""

    __tablename__ = "job_logs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(32), index=True)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    level: Mapped[str] = mapped_column(String(16))
    logger: Mapped[str] = mapped_column(String(200))
    message: Mapped[str] = mapped_column(Text)


class WorkerRecord(Base):
    """A live worker and what it can run, refreshed by its main process every few seconds
    (jobs.registry): the API refuses a job no live worker of its queue could ever run."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    # queue -> the most ranks one job may use there (CPU cores, or GPUs on the gpu queue)
    capacity: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    devices: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, index=True)
