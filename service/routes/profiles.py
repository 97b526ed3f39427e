"""Profile jobs: time a model's layers on a worker's own hardware and fit a cost model.

A profile is a job of kind "profile" in the job store, so it is queued, claimed, heartbeated,
recovered after a lost worker, cancelled and retried by exactly the machinery of training
jobs; these routes are its own view of that table (every route under `/v1/jobs` answers 404
for a profile, and these 404 for a training job). Its log is at `/v1/profiles/{id}/logs`
(service/routes/logs.py).
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Response, status

from spartan_service.jobs.models import Job
from spartan_service.jobs.profile_spec import ProfileSpec
from spartan_service.jobs.queue import enqueue_job
from spartan_service.jobs.store import JobStore
from spartan_service.service.deps import (
    ArtifactsDep,
    CeleryDep,
    CurrentTenant,
    SettingsDep,
    StoreDep,
)
from spartan_service.service.errors import MAX_OFFSET, check_text, not_found, responses
from spartan_service.service.routes.jobs import check_paths, check_uploads, delete_finished
from spartan_service.service.schemas import JobStatus, ProfileDetail, ProfilePublic, ProfilesPublic

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/profiles", tags=["profiles"], responses=responses(401))
KIND = "profile"


def public(job: Job) -> dict[str, Any]:
    metrics = job.metrics or {}
    return {
        "id": job.id, "name": job.name, "status": job.status, "queue": job.queue,
        "progress": job.progress or {}, "warnings": job.warnings or [], "error": job.error,
        "attempts": job.attempts, "worker": job.worker, "cancel_requested": job.cancel_requested,
        "spec": job.spec, "cost_model_id": metrics.get("cost_model_id"),
        "cost_models": metrics.get("cost_models") or [], "hardware": metrics.get("hardware"),
        "created_at": job.created_at, "updated_at": job.updated_at,
        "started_at": job.started_at, "finished_at": job.finished_at,
    }


def detail(job: Job, store: JobStore) -> ProfileDetail:
    rows = {r.id: r for r in store.profile_job_cost_models(job.id)}
    profiles = [{"batch": r.batch, "cost_model_id": r.id, "version": r.version,
                 "profile": r.profile} for r in rows.values()]
    first = public(job)["cost_model_id"]
    profile = rows[first].profile if first in rows else None
    return ProfileDetail(**public(job), profile=profile, profiles=profiles)


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ProfilePublic,
    responses={**responses(400, 413, 422, 503),
               202: {"description": "Queued; `Location` is the profile's URL."}},
    summary="Profile a model on a worker's own hardware",
    description="A worker on `queue` takes the job, holds its device alone (no training "
    "beside it), times every maskable layer at each density and batch size, fits a cost "
    "model per batch size (the next version of `name`) and records the hardware.",
)
def submit_profile(spec: ProfileSpec, response: Response, store: StoreDep, celery: CeleryDep,
                   tenant: CurrentTenant, settings: SettingsDep) -> ProfilePublic:
    check_text(spec.name, ["body", "name"])
    check_uploads(spec.model, spec.data, store, tenant)
    check_paths(spec.job_view(), settings)  # model folders and datasets, as for a job
    job = store.create_job(tenant, spec.model_dump(mode="json"), spec.resolved_queue(),
                           spec.name, kind=KIND)
    try:
        enqueue_job(job.id, job.queue, app=celery)
    except Exception as exc:
        log.exception("could not enqueue profile %s", job.id)
        store.finish_job(job.id, "failed", error=f"could not enqueue the profile: {exc}")
        raise HTTPException(
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            detail=f"the job queue is unavailable ({exc}); profile {job.id} was marked failed",
        ) from None
    response.headers["Location"] = f"/v1/profiles/{job.id}"
    return ProfilePublic(**public(job))


@router.get("", response_model=ProfilesPublic, responses=responses(422), summary="List profiles")
def list_profiles(
    store: StoreDep,
    tenant: CurrentTenant,
    status_: Annotated[JobStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> ProfilesPublic:
    rows, count = store.list_jobs(tenant, status_, limit, offset, kind=KIND)
    return ProfilesPublic(data=[ProfilePublic(**public(r)) for r in rows], count=count)


@router.get("/{profile_id}", response_model=ProfileDetail, responses=responses(404),
            summary="Get a profile: status, progress, the raw profile and its cost model")
def get_profile(profile_id: str, store: StoreDep, tenant: CurrentTenant) -> ProfileDetail:
    job = store.get_job(profile_id, tenant, kind=KIND)
    if job is None:
        raise not_found("profile")
    return detail(job, store)


@router.post("/{profile_id}/cancel", status_code=status.HTTP_202_ACCEPTED,
             response_model=ProfilePublic, responses=responses(404, 409),
             summary="Cancel a profile")
def cancel_profile(profile_id: str, store: StoreDep, tenant: CurrentTenant) -> ProfilePublic:
    job = store.request_cancel(profile_id, tenant, kind=KIND)
    if job is None:
        raise not_found("profile")
    if job.status in ("succeeded", "failed"):
        raise HTTPException(status_code=status.HTTP_409_CONFLICT,
                            detail=f"profile already {job.status}")
    return ProfilePublic(**public(job))


@router.delete(
    "/{profile_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=responses(404, 409),
    summary="Delete a finished profile",
    description="Its record, log and raw-profile files; the cost models it fitted stay (they are "
    "versions in the registry, used by jobs: `GET /v1/cost-models/{id}` keeps its profile). "
    "Only succeeded, failed or cancelled profiles; cancel a queued or running one first.",
)
def delete_profile(profile_id: str, store: StoreDep, artifacts: ArtifactsDep,
                   tenant: CurrentTenant) -> Response:
    delete_finished(store, artifacts, profile_id, tenant, KIND, "profile")
    return Response(status_code=status.HTTP_204_NO_CONTENT)
