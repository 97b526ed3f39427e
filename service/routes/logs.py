"""`GET /v1/jobs/{id}/logs`: what the worker logged while running the job (warnings, errors
with their traceback), stored with the job within a bound (spartan_service.jobs.store_extra)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from spartan_service.service.deps import CurrentTenant, StoreDep
from spartan_service.service.errors import MAX_OFFSET, not_found, responses
from spartan_service.service.schemas import LogRecordPublic, LogsPublic

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.get("/{job_id}/logs", response_model=LogsPublic, responses=responses(401, 404, 422),
            summary="A job's log")
def job_logs(
    job_id: str,
    tenant: CurrentTenant,
    store: StoreDep,
    since: Annotated[int, Query(ge=0, le=MAX_OFFSET,
                                description="Only records with id > since.")] = 0,
    limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
) -> LogsPublic:
    """The worker's log records for this job, oldest first: its INFO lines and every warning
    and error (with traceback) logged while it ran, over all its attempts."""
    if store.get_job(job_id, tenant) is None:
        raise not_found("job")
    rows, count = store.job_logs(job_id, since, limit)
    return LogsPublic(data=[LogRecordPublic.model_validate(r) for r in rows], count=count)
