"""Checks of uploaded tensor files, without torch and without ever unpickling.

.safetensors: the header is parsed and every tensor's byte range checked against the file.
.npz: read with numpy's allow_pickle=False, so object arrays (pickles) are refused.
"""

from __future__ import annotations

import io
import json
import re
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

SAFETENSORS_DTYPES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2,
    "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}
MAX_HEADER = 100 * 1024 * 1024
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class UploadError(ValueError):
    """The file is not a well-formed tensor file of an accepted kind."""


def kind_of(filename: str) -> str:
    lower = filename.lower()
    if lower.endswith(".safetensors"):
        return "safetensors"
    if lower.endswith(".npz"):
        return "npz"
    raise UploadError(f"file '{filename}': only .safetensors and .npz files are accepted")


def inspect_safetensors(data: bytes) -> dict[str, Any]:
    """{name: {"dtype", "shape"}} for a well-formed safetensors file, else UploadError."""
    if len(data) < 8:
        raise UploadError("safetensors file is truncated: no header length")
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER or 8 + n > len(data):
        raise UploadError("safetensors file is truncated or its header length is invalid")
    try:
        header = json.loads(data[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UploadError(f"safetensors header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise UploadError("safetensors header must be a JSON object")
    body = len(data) - 8 - n
    tensors: dict[str, Any] = {}
    end_max = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise UploadError(f"tensor '{name}': entry must be an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in SAFETENSORS_DTYPES:
            raise UploadError(f"tensor '{name}': unsupported dtype {dtype!r}")
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise UploadError(f"tensor '{name}': shape must be a list of non-negative ints")
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(isinstance(o, int) for o in offsets)):
            raise UploadError(f"tensor '{name}': data_offsets must be [begin, end]")
        begin, end = offsets
        count = int(np.prod(shape)) if shape else 1
        if not 0 <= begin <= end <= body or end - begin != count * SAFETENSORS_DTYPES[dtype]:
            raise UploadError(f"tensor '{name}': data_offsets do not match its shape and the file")
        end_max = max(end_max, end)
        tensors[name] = {"dtype": dtype, "shape": shape}
    if end_max != body:
        raise UploadError("safetensors file has bytes no tensor accounts for (or is truncated)")
    return tensors


def inspect_npz(data: bytes) -> dict[str, Any]:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            tensors = {}
            for name in archive.files:
                array = archive[name]
                if array.dtype.kind not in "biuf":
                    raise UploadError(f"array '{name}': dtype {array.dtype} is not numeric")
                tensors[name] = {"dtype": str(array.dtype), "shape": list(array.shape)}
    except UploadError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        raise UploadError(f"not a readable .npz without pickles: {exc}") from None
    return tensors


def inspect(filename: str, data: bytes) -> tuple[str, dict[str, Any]]:
    kind = kind_of(filename)
    tensors = inspect_safetensors(data) if kind == "safetensors" else inspect_npz(data)
    if not tensors:
        raise UploadError("file holds no tensors")
    return kind, tensors


def upload_path(uploads_dir: Path, upload_id: str, kind: str) -> Path:
    """Where an upload's bytes live: `<uploads_dir>/<id>.<kind>` (the API writes it there, the
    worker reads it from there)."""
    if not _ID.match(upload_id) or kind not in ("safetensors", "npz"):
        raise UploadError(f"invalid upload id {upload_id!r} or kind {kind!r}")
    return Path(uploads_dir) / f"{upload_id}.{kind}"
