"""Jobs: submit, list, get, cancel, delete, and their artifacts.

These are training jobs (kind "train"). A profile is a job of kind "profile" in the same table
(service/routes/profiles.py): every route here answers 404 for one, as if it did not exist.

Handlers are plain `def`: FastAPI runs them in its threadpool, so database and file I/O never
block the event loop.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Annotated, Any, BinaryIO

from fastapi import APIRouter, HTTPException, Query, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from spartan_service.costmodels import checks
from spartan_service.jobs import catalog, datapaths
from spartan_service.jobs.admission import estimate, problems
from spartan_service.jobs.artifacts import ArtifactStore, check_name
from spartan_service.jobs.models import Job
from spartan_service.jobs.queue import enqueue_job
from spartan_service.jobs.registry import admission_error, unserved_warning
from spartan_service.jobs.results import ResultsCache
from spartan_service.jobs.settings import Settings
from spartan_service.jobs.spec import DataSpec, JobSpec, ModelSpec
from spartan_service.jobs.status import TERMINAL
from spartan_service.jobs.store import JobStore
from spartan_service.service import serialize
from spartan_service.service.deps import (
    ArtifactsDep,
    CeleryDep,
    CurrentTenant,
    ResultsDep,
    SettingsDep,
    StoreDep,
)
from spartan_service.service.errors import MAX_OFFSET, check_text, field_error, not_found, responses
from spartan_service.service.schemas import (
    ArtifactPublic,
    ArtifactsPublic,
    JobPublic,
    JobResults,
    JobsPublic,
    JobStatus,
)

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=responses(401))
KIND = "train"


def check_resources(spec: JobSpec, upload_tensors: dict[str, Any] | None,
                    settings: Settings) -> None:
    """The job's estimated parameters, steps, data and memory within its queue's limits
    (spartan_service.jobs.admission); 422 naming each limit it goes over."""
    over = problems(estimate(spec, upload_tensors), settings.job_limits(spec.resolved_queue()))
    if over:
        raise HTTPException(
            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=[{"loc": ["body", field], "msg": message, "type": "resource_limit"}
                    for field, message in over])


def check_references(spec: JobSpec, store: JobStore, tenant: str,
                     settings: Settings | None = None) -> dict[str, Any] | None:
    """Ids in the spec must name this tenant's uploads and cost models, of the right kind; a
    multi-process job must fit some live worker of its queue (when one is alive to say); with
    `settings`, its paths must lie under the data roots (check_paths). Returns the data
    upload's tensors, when the job trains on one."""
    check_text(spec.name, ["body", "name"])
    if settings is not None:
        check_paths(spec, settings)
    if spec.resources.processes > 1:
        refused = admission_error(store.live_workers(), spec.resolved_queue(),
                                  spec.resources.processes)
        if refused:
            raise field_error(["body", "resources", "processes"], refused)
    if spec.cost_model.kind == "fitted" and spec.cost_model.id:
        row = store.get_cost_model(spec.cost_model.id, tenant)
        if row is None:
            raise field_error(["body", "cost_model", "id"],
                              f"no cost model with id '{spec.cost_model.id}'")
        check_cost_model(spec, row.data)
    if spec.cost_model.kind == "fitted" and spec.cost_model.name:
        check_text(spec.cost_model.name, ["body", "cost_model", "name"])
        versions = store.cost_model_versions(tenant, spec.cost_model.name)
        if not versions:
            raise field_error(["body", "cost_model", "name"],
                              f"no cost model named '{spec.cost_model.name}'")
        # The worker picks the version measured on its hardware: refused now only when no
        # version could serve (the newest one's problem is shown).
        refusals = []
        for version in versions:
            try:
                check_cost_model(spec, version.data)
                break
            except HTTPException as exc:
                refusals.append(exc)
        else:
            first = refusals[0]
            if isinstance(first.detail, list):  # the checks name the id; this spec has a name
                for item in first.detail:
                    item["loc"] = ["body", "cost_model", "name" if item["loc"][-1] == "id"
                                   else item["loc"][-1]]
            raise first
    return check_uploads(spec.model, spec.data, store, tenant)


def check_uploads(model: ModelSpec, data: DataSpec, store: JobStore, tenant: str
                  ) -> dict[str, Any] | None:
    """The uploads a model or data section names must be this tenant's, of the right kind.
    Returns the data upload's tensors, when there is one."""
    if model.weights:
        upload = store.get_upload(model.weights, tenant)
        if upload is None:
            raise field_error(["body", "model", "weights"],
                              f"no upload with id '{model.weights}'")
        if upload.kind != "safetensors":
            raise field_error(["body", "model", "weights"],
                              "initial weights must be an uploaded .safetensors file")
    if data.upload:
        upload = store.get_upload(data.upload, tenant)
        if upload is None:
            raise field_error(["body", "data", "upload"], f"no upload with id '{data.upload}'")
        missing = [k for k in ("x", "y") if k not in upload.tensors]
        if missing:
            raise field_error(["body", "data", "upload"],
                              f"uploaded data needs tensors 'x' and 'y'; missing: "
                              f"{', '.join(missing)}")
        return dict(upload.tensors)
    return None


def check_cost_model(spec: JobSpec, data: dict[str, Any]) -> None:
    """422 now for what the worker would refuse after queueing (costmodels.checks)."""
    shapes = None
    if spec.model.arch in catalog.BUILTIN_MODELS:
        known = catalog.dataset_shape(spec.data.dataset, spec.data.kwargs)
        if known is not None:
            shapes = catalog.weight_shapes(spec.model.arch, spec.model.kwargs, *known)
    s = spec.sparsity
    problems = checks.budget_problems(data, s.structure, s.budget, spec.cost_model.budget_ms,
                                      spec.model.arch, shapes)
    if problems:
        loc, msg = problems[0]
        raise field_error(loc, msg)


def cost_model_warnings(spec: JobSpec, store: JobStore, tenant: str) -> list[str]:
    if spec.cost_model.kind != "fitted" or not spec.cost_model.id:
        return []
    row = store.get_cost_model(spec.cost_model.id, tenant)
    return [f"cost model: {w}" for w in checks.fit_warnings(row.data)] if row else []


def public_job(job: Job, results: ResultsCache) -> JobPublic:
    """The job as the API shows it, with its report's figures once it has succeeded."""
    out = JobPublic.model_validate(job)
    if job.status == "succeeded":
        summary = results.get(job.id, job.finished_at)
        out.results = JobResults.model_validate(summary) if summary else None
    return out


def check_paths(spec: JobSpec, settings: Settings) -> None:
    """Paths must lie under SPARTAN_DATA_ROOTS; what they name is checked where this process
    sees the storage (settings.check_data)."""
    try:
        datapaths.check_spec(spec, settings.roots(), look=settings.check_data)
    except datapaths.PathError as exc:
        raise field_error(["body", *exc.loc], exc.msg) from None


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobPublic,
    responses={**responses(400, 413, 422, 503),
               202: {"description": "Queued; `Location` is the job's URL."}},
    summary="Submit a sparse-training job",
)
def submit_job(
    spec: JobSpec, store: StoreDep, celery: CeleryDep, tenant: CurrentTenant,
    settings: SettingsDep,
) -> Response:
    check_resources(spec, check_references(spec, store, tenant, settings), settings)
    warnings = spec.warnings() + cost_model_warnings(spec, store, tenant)
    unserved = unserved_warning(store.live_workers(), spec.resolved_queue())
    if unserved:
        warnings.append(unserved)
    job = store.create_job(tenant, spec.model_dump(mode="json"), spec.resolved_queue(),
                           spec.name, warnings)
    try:
        enqueue_job(job.id, job.queue, app=celery)
    except Exception as exc:
        # Not left queued forever with no message in the broker: it ends failed, with why.
        log.exception("could not enqueue job %s", job.id)
        store.finish_job(job.id, JobStatus.failed, error=f"could not enqueue the job: {exc}")
        raise HTTPException(
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            detail=f"the job queue is unavailable ({exc}); job {job.id} was marked failed",
        ) from None
    return serialize.one(JobPublic, job, status.HTTP_202_ACCEPTED,
                         headers={"Location": f"/v1/jobs/{job.id}"})


@router.get("", response_model=JobsPublic, responses=responses(422), summary="List jobs")
def list_jobs(
    store: StoreDep,
    tenant: CurrentTenant,
    results: ResultsDep,
    status_: Annotated[JobStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> Response:
    rows, count = store.list_jobs(tenant, status_, limit, offset, kind=KIND)
    return serialize.page(JobPublic, rows, count, lambda r: public_job(r, results))


@router.get("/{job_id}", response_model=JobPublic, responses=responses(404), summary="Get a job")
async def get_job(job_id: str, store: StoreDep, tenant: CurrentTenant, results: ResultsDep
                  ) -> Response:
    # The dashboard's and `spartan submit --wait`'s hot path. One Core SELECT (job_view);
    # on SQLite it takes ~0.1 ms, less than the hop to a threadpool thread and back, so it
    # runs on the event loop; a networked database is asked from the threadpool.
    if store.inline_reads:
        job = store.job_view(job_id, tenant, kind=KIND)
    else:
        job = await run_in_threadpool(store.job_view, job_id, tenant, KIND)
    if job is None:
        raise not_found("job")
    return serialize.one(JobPublic, job, build=lambda r: public_job(r, results))


@router.delete(
    "/{job_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=responses(404, 409),
    summary="Delete a finished job and its artifacts",
    description="Only succeeded, failed or cancelled jobs; cancel a queued or running one first. "
    "A profile is deleted at `DELETE /v1/profiles/{id}` (404 here).",
)
def delete_job(job_id: str, store: StoreDep, artifacts: ArtifactsDep,
               tenant: CurrentTenant) -> Response:
    delete_finished(store, artifacts, job_id, tenant, KIND, "job")
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def delete_finished(store: JobStore, artifacts: ArtifactStore, job_id: str, tenant: str,
                    kind: str, what: str) -> None:
    """Delete a finished job of `kind` and its artifacts: 404 when there is none of that kind
    (a profile is not a training job, nor the reverse), 409 while it is queued or running."""
    job = store.delete_job(job_id, tenant, kind=kind)
    if job is None:
        raise not_found(what)
    if job.status not in TERMINAL:
        raise HTTPException(status_code=status.HTTP_409_CONFLICT,
                            detail=f"{what} is {job.status}: cancel it before deleting it")
    artifacts.remove(job.id)


@router.post(
    "/{job_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobPublic,
    responses=responses(404, 409),
    summary="Cancel a job",
    description="A queued job is cancelled at once; a running one stops within a few seconds, "
    "when its worker next reports. Cancelling a cancelled job is a no-op.",
)
def cancel_job(job_id: str, store: StoreDep, tenant: CurrentTenant) -> Response:
    job = store.request_cancel(job_id, tenant, kind=KIND)
    if job is None:
        raise not_found("job")
    if job.status in ("succeeded", "failed"):
        raise HTTPException(status_code=status.HTTP_409_CONFLICT,
                            detail=f"job already {job.status}")
    return serialize.one(JobPublic, job, status.HTTP_202_ACCEPTED)


@router.get("/{job_id}/artifacts", response_model=ArtifactsPublic, responses=responses(404),
            summary="List a job's artifacts",
            description="A training job's files. A profile's raw profiles are in "
            "`GET /v1/profiles/{id}` (`profiles`), not here (404).")
def list_artifacts(
    job_id: str, store: StoreDep, artifacts: ArtifactsDep, tenant: CurrentTenant
) -> ArtifactsPublic:
    if store.get_job(job_id, tenant, kind=KIND) is None:
        raise not_found("job")
    items = [ArtifactPublic.model_validate(a) for a in artifacts.list(job_id)]
    return ArtifactsPublic(data=items, count=len(items))


@router.get(
    "/{job_id}/artifacts/{name}",
    response_class=StreamingResponse,
    responses={**responses(404), 200: {"content": {"application/octet-stream": {}},
                                       "description": "The file, streamed."}},
    summary="Download an artifact",
    description="A training job's file (404 for a profile, as the list).",
)
def download_artifact(
    job_id: str, name: str, store: StoreDep, artifacts: ArtifactsDep, tenant: CurrentTenant
) -> StreamingResponse:
    if store.get_job(job_id, tenant, kind=KIND) is None:
        raise not_found("job")
    try:
        f = artifacts.open(job_id, check_name(name))  # a public artifact, never a checkpoint
    except (ValueError, FileNotFoundError):
        raise not_found("artifact") from None
    headers = {"content-disposition": f'attachment; filename="{name}"'}
    if f.seekable():  # the size of this very version (metrics.jsonl is rewritten while running)
        headers["content-length"] = str(f.seek(0, os.SEEK_END))
        f.seek(0)
    return StreamingResponse(_chunks(f), media_type=_media_type(name), headers=headers)


def _chunks(f: BinaryIO, size: int = 1 << 20) -> Iterator[bytes]:
    with f:
        while block := f.read(size):
            yield block


def _media_type(name: str) -> str:
    if name.endswith(".json"):
        return "application/json"
    if name.endswith(".jsonl"):
        return "application/x-ndjson"
    if name.endswith(".png"):
        return "image/png"
    return "application/octet-stream"
