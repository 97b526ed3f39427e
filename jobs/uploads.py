"""Checks of uploaded tensor files, without torch and without ever unpickling.

.safetensors: the header is parsed and every tensor's byte range checked against the file.
.npz: read with numpy's allow_pickle=False, so object arrays (pickles) are refused.
A file holding both `x` and `y` is a dataset: refused here if a job could not train on it (the
rules of worker.data), rather than failing the job later.
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
# safetensors dtypes numpy reads natively (for the dataset checks; others skip the value checks)
NUMPY_DTYPES = {
    "BOOL": "?", "U8": "u1", "I8": "i1", "I16": "<i2", "U16": "<u2", "F16": "<f2", "I32": "<i4",
    "U32": "<u4", "F32": "<f4", "I64": "<i8", "U64": "<u8", "F64": "<f8",
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
    return _read_npz(data)[0]


def _read_npz(data: bytes, keep: tuple[str, ...] = ()
              ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """{name: {"dtype", "shape"}}, and the arrays named in `keep`."""
    tensors: dict[str, Any] = {}
    kept: dict[str, np.ndarray] = {}
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            for name in archive.files:
                array = archive[name]
                if array.dtype.kind not in "biuf":
                    raise UploadError(f"array '{name}': dtype {array.dtype} is not numeric")
                tensors[name] = {"dtype": str(array.dtype), "shape": list(array.shape)}
                if name in keep:
                    kept[name] = array
    except UploadError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        raise UploadError(f"not a readable .npz without pickles: {exc}") from None
    return tensors, kept


def _safetensors_array(data: bytes, name: str) -> np.ndarray | None:
    """One tensor of an already inspected safetensors file, or None for dtypes numpy lacks."""
    (n,) = struct.unpack("<Q", data[:8])
    info = json.loads(data[8 : 8 + n])[name]
    dtype = NUMPY_DTYPES.get(info["dtype"])
    if dtype is None:
        return None
    begin, end = info["data_offsets"]
    return np.frombuffer(data[8 + n + begin : 8 + n + end], dtype=dtype).reshape(info["shape"])


def check_dataset(xs: list[int], ys: list[int], x: np.ndarray | None, y: np.ndarray | None
                  ) -> None:
    """x of shape (N, ...), y of N integer labels >= 0, N >= 2, x finite (worker.data's rules)."""
    if len(xs) < 2:
        raise UploadError(f"data: x must have shape (N, ...) with N examples, got {xs}")
    if len(ys) != 1:
        raise UploadError(f"data: y must be 1-D (one class label per example), got shape {ys}")
    if xs[0] != ys[0]:
        raise UploadError(f"data: {xs[0]} examples in x but {ys[0]} labels in y")
    if ys[0] < 2:
        raise UploadError(f"data: need at least 2 examples, got {ys[0]}")
    if x is not None and not np.isfinite(x).all():
        raise UploadError("data: x holds NaN or infinite values")
    if y is not None:
        if y.dtype.kind == "f" and not (np.isfinite(y).all() and np.array_equal(y, np.round(y))):
            raise UploadError("data: y must hold integer class labels, not fractions")
        if y.min() < 0:
            raise UploadError("data: class labels in y must be >= 0")


def inspect(filename: str, data: bytes) -> tuple[str, dict[str, Any]]:
    kind = kind_of(filename)
    arrays: dict[str, np.ndarray | None] = {}
    if kind == "safetensors":
        tensors = inspect_safetensors(data)
        if "x" in tensors and "y" in tensors:
            arrays = {k: _safetensors_array(data, k) for k in ("x", "y")}
    else:
        tensors, kept = _read_npz(data, keep=("x", "y"))
        arrays = dict(kept)
    if not tensors:
        raise UploadError("file holds no tensors")
    if "x" in tensors and "y" in tensors:
        check_dataset(tensors["x"]["shape"], tensors["y"]["shape"], arrays.get("x"),
                      arrays.get("y"))
    return kind, tensors


def upload_path(uploads_dir: Path, upload_id: str, kind: str) -> Path:
    """Where an upload's bytes live: `<uploads_dir>/<id>.<kind>` (the API writes it there, the
    worker reads it from there)."""
    if not _ID.match(upload_id) or kind not in ("safetensors", "npz"):
        raise UploadError(f"invalid upload id {upload_id!r} or kind {kind!r}")
    return Path(uploads_dir) / f"{upload_id}.{kind}"
