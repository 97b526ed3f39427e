"""What the worker logged while running a job (warnings, errors with their traceback), stored
with the job within a bound (spartan_service.jobs.store_extra): `GET /v1/jobs/{id}/logs` for a
training job, `GET /v1/profiles/{id}/logs` for a profile (each answers 404 for the other kind,
as every route under /v1/jobs and /v1/profiles does)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from spartan_service.jobs.store import JobStore
from spartan_service.service.deps import CurrentTenant, StoreDep
from spartan_service.service.errors import MAX_OFFSET, not_found, responses
from spartan_service.service.schemas import LogRecordPublic, LogsPublic

router = APIRouter()
Since = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Only records with id > since.")]
Limit = Annotated[int, Query(ge=1, le=5000)]


def _logs(store: JobStore, job_id: str, tenant: str, kind: str, what: str, since: int,
          limit: int) -> LogsPublic:
    if store.get_job(job_id, tenant, kind=kind) is None:
        raise not_found(what)
    rows, count = store.job_logs(job_id, since, limit)
    return LogsPublic(data=[LogRecordPublic.model_validate(r) for r in rows], count=count)


@router.get("/v1/jobs/{job_id}/logs", response_model=LogsPublic, tags=["jobs"],
            responses=responses(401, 404, 422), summary="A job's log")
def job_logs(job_id: str, tenant: CurrentTenant, store: StoreDep, since: Since = 0,
             limit: Limit = 1000) -> LogsPublic:
    """The worker's log records for this training job, oldest first: its INFO lines and every
    warning and error (with traceback) logged while it ran, over all its attempts. A
    profile's log is at `/v1/profiles/{id}/logs` (404 here)."""
    return _logs(store, job_id, tenant, "train", "job", since, limit)


@router.get("/v1/profiles/{profile_id}/logs", response_model=LogsPublic, tags=["profiles"],
            responses=responses(401, 404, 422), summary="A profile's log")
def profile_logs(profile_id: str, tenant: CurrentTenant, store: StoreDep, since: Since = 0,
                 limit: Limit = 1000) -> LogsPublic:
    """The worker's log records for this profile, oldest first, over all its attempts."""
    return _logs(store, profile_id, tenant, "profile", "profile", since, limit)
