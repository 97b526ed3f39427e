"""Sweeps: one base spec trained at several budgets, its points and their Pareto frontier.

A sweep's jobs are ordinary jobs (visible in /v1/jobs, tagged `sweep:ID`); the sweep keeps
their order and reads their results.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Response, status

from spartan_service.jobs.models import Sweep
from spartan_service.jobs.queue import enqueue_job
from spartan_service.jobs.results import ResultsCache
from spartan_service.jobs.spec import JobSpec
from spartan_service.jobs.status import JobStatus
from spartan_service.jobs.store import new_id
from spartan_service.jobs.store_extra import JobState
from spartan_service.jobs.sweeps import (
    PointError,
    SweepCreate,
    budget_kind,
    dense_reference,
    expand,
    pareto,
)
from spartan_service.jobs.sweeps import sweep_status as overall_status
from spartan_service.service.deps import CeleryDep, CurrentTenant, ResultsDep, SettingsDep, StoreDep
from spartan_service.service.errors import MAX_OFFSET, check_text, field_error, not_found, responses
from spartan_service.service.routes.jobs import check_references, check_resources
from spartan_service.service.schemas import SweepPoint, SweepPublic, SweepsPublic, SweepSummary

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/sweeps", tags=["sweeps"], responses=responses(401))


def _job_name(base: str, key: dict[str, Any]) -> str:
    parts = [base, key["method"]]
    if key["structure"]:
        parts.append(key["structure"])
    if key["budget"] is not None:
        parts.append(f"{key['budget']:g}")
    return " ".join(parts)[:200]


def _point_spec(spec: JobSpec, sweep_id: str, name: str) -> dict[str, Any]:
    data = spec.model_dump(mode="json")
    data["name"] = name
    data["tags"] = [*data.get("tags", []), f"sweep:{sweep_id}"][-32:]
    return data


def _summary(sweep: Sweep, jobs: dict[str, JobState]) -> dict[str, Any]:
    statuses = [jobs[p["job_id"]].status if p["job_id"] in jobs else "failed"
                for p in sweep.points]
    return {"id": sweep.id, "name": sweep.name,
            "status": overall_status(statuses, sweep.cancel_requested),
            "counts": dict(Counter(statuses)), "budgets": sweep.budgets,
            "budget_kind": budget_kind(sweep.spec),
            "cancel_requested": sweep.cancel_requested, "created_at": sweep.created_at}


def sweep_public(sweep: Sweep, jobs: dict[str, JobState], results: ResultsCache) -> SweepPublic:
    points: list[dict[str, Any]] = []
    for key in sweep.points:
        job = jobs.get(key["job_id"])
        figures = (results.get(job.id, job.finished_at) if job and job.status == "succeeded"
                   else None) or {}
        points.append({**key, "status": job.status if job else "failed",
                       "error": job.error if job else "the job was deleted",
                       "accuracy": figures.get("accuracy"),
                       "measured_latency": figures.get("measured_latency"),
                       "predicted_latency": figures.get("predicted_latency"),
                       "dense_accuracy": figures.get("dense_accuracy"),
                       "dense_latency": figures.get("dense_latency")})
    frontier = pareto([(p["accuracy"], p["measured_latency"]) for p in points])
    return SweepPublic.model_validate({
        **_summary(sweep, jobs), "spec": sweep.spec, "dense": dense_reference(points),
        "points": [SweepPoint.model_validate({**p, "pareto": on})
                   for p, on in zip(points, frontier, strict=True)]})


def _load(sweep_id: str, store: StoreDep, tenant: str) -> tuple[Sweep, dict[str, JobState]]:
    sweep = store.get_sweep(sweep_id, tenant)
    if sweep is None:
        raise not_found("sweep")
    return sweep, store.job_states([p["job_id"] for p in sweep.points])


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=SweepPublic,
    responses={**responses(400, 413, 422, 503),
               202: {"description": "Its jobs are queued; `Location` is the sweep's URL."}},
    summary="Start a sweep over budgets",
)
def create_sweep(body: SweepCreate, response: Response, store: StoreDep, celery: CeleryDep,
                 tenant: CurrentTenant, results: ResultsDep, settings: SettingsDep
                 ) -> SweepPublic:
    """One job per budget (and method, structure), tracked together. Budgets are fractions of
    the cost kept (`sparsity.budget`), or milliseconds (`cost_model.budget_ms`) when the base
    spec sets a latency budget. Method "dense" adds one dense reference point."""
    check_text(body.name, ["body", "name"])
    try:
        check_resources(body.spec, check_references(body.spec, store, tenant, settings), settings)
    except HTTPException as exc:  # its loc is the job route's ["body", ...]: under "spec" here
        if isinstance(exc.detail, list):
            for item in exc.detail:
                item["loc"] = ["body", "spec", *item["loc"][1:]]
        raise
    try:
        points = expand(body)
    except PointError as exc:
        raise field_error(exc.loc, str(exc)) from None
    sweep_id = new_id()
    base = body.name or body.spec.name or f"sweep {sweep_id[:6]}"
    rows = []
    for p in points:
        name = _job_name(base, p.key())
        rows.append((p.key(), _point_spec(p.spec, sweep_id, name), p.spec.resolved_queue(),
                     name, p.spec.warnings()))
    sweep, jobs = store.create_sweep(tenant, body.name, body.spec.model_dump(mode="json"),
                                     body.budgets, rows, sweep_id=sweep_id)
    for i, job in enumerate(jobs):
        try:
            enqueue_job(job.id, job.queue, app=celery)
        except Exception as exc:
            log.exception("could not enqueue job %s of sweep %s", job.id, sweep.id)
            for rest in jobs[i:]:
                store.finish_job(rest.id, JobStatus.failed,
                                 error=f"could not enqueue the job: {exc}")
            raise HTTPException(
                status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
                detail=f"the job queue is unavailable ({exc}); {len(jobs) - i} of the sweep's "
                f"{len(jobs)} jobs were marked failed",
            ) from None
    response.headers["Location"] = f"/v1/sweeps/{sweep.id}"
    states = {j.id: JobState(j.id, j.status, j.error, j.finished_at) for j in jobs}
    return sweep_public(sweep, states, results)


@router.get("", response_model=SweepsPublic, responses=responses(422), summary="List sweeps")
def list_sweeps(
    store: StoreDep,
    tenant: CurrentTenant,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> SweepsPublic:
    rows, count = store.list_sweeps(tenant, limit, offset)
    jobs = store.job_states([p["job_id"] for row in rows for p in row.points])
    return SweepsPublic(data=[SweepSummary.model_validate(_summary(r, jobs)) for r in rows],
                        count=count)


@router.get("/{sweep_id}", response_model=SweepPublic, responses=responses(404),
            summary="A sweep's points and frontier")
def get_sweep(sweep_id: str, store: StoreDep, tenant: CurrentTenant, results: ResultsDep
              ) -> SweepPublic:
    """Each point's status, accuracy, measured and predicted latency (ms), and whether it is
    on the Pareto frontier of max accuracy and min measured latency."""
    sweep, jobs = _load(sweep_id, store, tenant)
    return sweep_public(sweep, jobs, results)


@router.post(
    "/{sweep_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=SweepPublic,
    responses=responses(404),
    summary="Cancel a sweep's unfinished jobs",
    description="Queued points are cancelled at once, running ones within a few seconds; "
    "finished points keep their results.",
)
def cancel_sweep(sweep_id: str, store: StoreDep, tenant: CurrentTenant, results: ResultsDep
                 ) -> SweepPublic:
    sweep, jobs = _load(sweep_id, store, tenant)
    store.mark_sweep_cancelled(sweep.id)
    for job_id, job in jobs.items():
        if job.status in ("queued", "running"):
            store.request_cancel(job_id, tenant)
    return sweep_public(*_load(sweep_id, store, tenant), results)
