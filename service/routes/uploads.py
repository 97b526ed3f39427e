"""Uploads: tensor files (.safetensors weights, .npz/.safetensors data) that jobs refer to by id.

The body is streamed into the upload store (jobs.upload_store, through service.upload_stream),
in bounded memory and stopped at the size limit or the tenant's quota; the stored file is then
checked by jobs.uploads (bounded headers, exact byte ranges, streamed decompression; never
unpickled), and deleted when refused. The API names files by upload id only, never by path.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool

from spartan_service.jobs.store import new_id
from spartan_service.jobs.upload_store import UploadStore
from spartan_service.jobs.uploads import Limits, UploadError, inspect_file, kind_of
from spartan_service.service.deps import CurrentTenant, ResourcesDep, StoreDep
from spartan_service.service.errors import MAX_OFFSET, field_error, not_found, responses
from spartan_service.service.schemas import UploadDetail, UploadPublic, UploadsPublic
from spartan_service.service.state import Resources
from spartan_service.service.upload_stream import FIELD, receive_file, too_large

router = APIRouter(prefix="/v1/uploads", tags=["uploads"], responses=responses(401))

_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {"multipart/form-data": {
    "schema": {"type": "object", "required": [FIELD], "properties": {
        FIELD: {"type": "string", "format": "binary",
                "description": "A .safetensors or .npz file (by its name)."}}},
}}}}


def _limit(resources: Resources, used: int) -> tuple[int, str]:
    """The most bytes this upload may have, and what to say beyond it."""
    settings = resources.settings
    left = settings.tenant_quota_bytes - used
    if left < settings.max_upload_bytes:
        return max(left, 0), (f"upload would exceed the tenant's quota of "
                              f"{settings.tenant_quota_bytes} bytes ({used} bytes used; "
                              f"delete uploads to free space)")
    return settings.max_upload_bytes, (f"upload is larger than the limit of "
                                       f"{settings.max_upload_bytes} bytes")


def _inspect(uploads: UploadStore, upload_id: str, filename: str, limits: Limits
             ) -> tuple[str, dict[str, Any]]:
    with uploads.open(upload_id) as f:
        return inspect_file(filename, f, uploads.size(upload_id), limits)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=UploadDetail,
    responses=responses(400, 413, 422),
    summary="Upload a .safetensors or .npz file",
    description="Multipart form, field `file`. Weights for `model.weights` must be "
    ".safetensors; data for `data.upload` needs tensors `x` and `y`. Pickles are refused. "
    "Uploads count against the tenant's quota (413 beyond it).",
    openapi_extra=_BODY,
)
async def create_upload(
    request: Request, resources: ResourcesDep, store: StoreDep, tenant: CurrentTenant
) -> UploadDetail:
    used = await run_in_threadpool(store.upload_bytes, tenant)
    limit, message = _limit(resources, used)
    uploads, upload_id = resources.uploads, new_id()
    writer = await run_in_threadpool(uploads.writer, upload_id)
    try:
        received = await receive_file(request, writer, limit, message)
        await run_in_threadpool(writer.commit)
    except BaseException:
        writer.abort()
        raise
    try:
        try:
            kind_of(received.filename)
            limits = Limits(max_unpacked_bytes=resources.settings.max_unpacked_bytes)
            kind, tensors = await run_in_threadpool(
                _inspect, uploads, upload_id, received.filename, limits)
        except UploadError as exc:
            raise field_error(["body", FIELD], str(exc)) from None
        # Uploads racing each other were each under the quota when they began.
        used = await run_in_threadpool(store.upload_bytes, tenant)
        if used + received.size > resources.settings.tenant_quota_bytes:
            raise too_large(_limit(resources, used)[1])
    except BaseException:
        await run_in_threadpool(uploads.delete, upload_id)
        raise
    row = await run_in_threadpool(store.create_upload, tenant, received.filename, kind,
                                  received.size, received.sha256, tensors, upload_id)
    return UploadDetail.of(row)


@router.get("", response_model=UploadsPublic, responses=responses(422), summary="List uploads")
def list_uploads(
    store: StoreDep,
    tenant: CurrentTenant,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> UploadsPublic:
    rows, count = store.list_uploads(tenant, limit, offset)
    return UploadsPublic(data=[UploadPublic.of(r) for r in rows], count=count)


@router.get("/{upload_id}", response_model=UploadDetail, responses=responses(404),
            summary="Get an upload's description, with every tensor")
def get_upload(upload_id: str, store: StoreDep, tenant: CurrentTenant) -> UploadDetail:
    row = store.get_upload(upload_id, tenant)
    if row is None:
        raise not_found("upload")
    return UploadDetail.of(row)


@router.delete("/{upload_id}", status_code=status.HTTP_204_NO_CONTENT,
               response_class=Response, responses=responses(404),
               summary="Delete an upload (frees its bytes from the tenant's quota)",
               description="Jobs already queued that use it fail when they start.")
def delete_upload(upload_id: str, resources: ResourcesDep, store: StoreDep,
                  tenant: CurrentTenant) -> Response:
    row = store.delete_upload(upload_id, tenant)
    if row is None:
        raise not_found("upload")
    resources.uploads.delete(row.id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
