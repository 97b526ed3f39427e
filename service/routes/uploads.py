"""Uploads: tensor files (.safetensors weights, .npz/.safetensors data) that jobs refer to by id.

Content is checked by jobs.uploads (headers and byte ranges; numpy with allow_pickle=False),
never unpickled, and stored atomically as `{uploads_dir}/{id}.{kind}`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from fastapi import APIRouter, HTTPException, UploadFile, status

from jobs.artifacts import write_atomic
from jobs.store import new_id
from jobs.uploads import UploadError, inspect, kind_of
from service.deps import CurrentTenant, ResourcesDep, StoreDep
from service.errors import field_error, not_found, responses
from service.schemas import UploadPublic, UploadsPublic

router = APIRouter(prefix="/v1/uploads", tags=["uploads"], responses=responses(401))
_CHUNK = 1 << 20


def _read_limited(upload: UploadFile, limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    while chunk := upload.file.read(_CHUNK):
        size += len(chunk)
        if size > limit:
            raise HTTPException(
                status_code=status.HTTP_413_CONTENT_TOO_LARGE,
                detail=f"upload is larger than the limit of {limit} bytes",
            )
        parts.append(chunk)
    return b"".join(parts)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=UploadPublic,
    responses=responses(400, 413, 422),
    summary="Upload a .safetensors or .npz file",
    description="Multipart form, field `file`. Weights for `model.weights` must be "
    ".safetensors; data for `data.upload` needs tensors `x` and `y`. Pickles are refused.",
)
def create_upload(
    file: UploadFile, resources: ResourcesDep, store: StoreDep, tenant: CurrentTenant
) -> UploadPublic:
    # Shown back to users only: no path, no control characters, bounded length.
    filename = "".join(c for c in Path(file.filename or "").name if c.isprintable())[:300]
    try:
        kind_of(filename)
    except UploadError as exc:
        raise field_error(["body", "file"], str(exc)) from None
    data = _read_limited(file, resources.settings.max_upload_bytes)
    try:
        kind, tensors = inspect(filename, data)
    except UploadError as exc:
        raise field_error(["body", "file"], str(exc)) from None
    upload_id = new_id()
    write_atomic(resources.upload_path(upload_id, kind), data)
    row = store.create_upload(tenant, filename, kind, len(data), hashlib.sha256(data).hexdigest(),
                              tensors, upload_id=upload_id)
    return UploadPublic.model_validate(row)


@router.get("", response_model=UploadsPublic, summary="List uploads")
def list_uploads(store: StoreDep, tenant: CurrentTenant) -> UploadsPublic:
    rows = store.list_uploads(tenant)
    return UploadsPublic(data=[UploadPublic.model_validate(r) for r in rows], count=len(rows))


@router.get("/{upload_id}", response_model=UploadPublic, responses=responses(404),
            summary="Get an upload's description")
def get_upload(upload_id: str, store: StoreDep, tenant: CurrentTenant) -> UploadPublic:
    row = store.get_upload(upload_id, tenant)
    if row is None:
        raise not_found("upload")
    return UploadPublic.model_validate(row)
