"""The safetensors format: checked at upload, read by the worker, without torch or pickles.

Checked (`inspect_safetensors_file`): the header's size and nesting are bounded before it is
parsed; every tensor's dtype, shape and byte range are checked with exact integer arithmetic,
and the ranges must cover the data section exactly (sorted, no overlaps, no gaps); a dataset's
`x` and `y` values are streamed into the dataset rules' findings.
Read (`read_safetensors`): the worker reads uploads through the storage interface (a file
object, not a path to memory-map); reading the whole file and then parsing it would hold it
twice, so each tensor's bytes land in a fresh uint8 array the caller views as the tensor's
dtype. A file cut short since its upload is an UploadError.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Collection, Iterator
from typing import IO, Any

import numpy as np

from spartan_service.jobs.dataset_rules import Findings
from spartan_service.jobs.fields import check_text
from spartan_service.jobs.upload_limits import Limits, UploadError, is_int, stream_values

SAFETENSORS_DTYPES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2,
    "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}
# safetensors dtypes numpy reads natively (for the dataset checks; others skip the value checks)
NUMPY_DTYPES = {
    "BOOL": "?", "U8": "u1", "I8": "i1", "I16": "<i2", "U16": "<u2", "F16": "<f2", "I32": "<i4",
    "U32": "<u4", "F32": "<f4", "I64": "<i8", "U64": "<u8", "F64": "<f8",
}
MAX_NAME = 1000  # characters of a tensor's name


def _json_depth(raw: bytes) -> int:
    """Deepest nesting of objects and arrays in a JSON text, strings skipped (vectorised, so a
    deeply nested header is refused before the recursive parser sees it)."""
    text = re.sub(rb'"(?:[^"\\]|\\.)*"', b'""', raw)
    codes = np.frombuffer(text, dtype=np.uint8)
    steps = np.isin(codes, (ord("{"), ord("["))).astype(np.int64)
    steps -= np.isin(codes, (ord("}"), ord("]")))
    return int(np.cumsum(steps).max(initial=0))


def safetensors_header(f: IO[bytes], size: int, limits: Limits) -> tuple[int, dict[str, Any]]:
    head = f.read(8)
    if len(head) < 8:
        raise UploadError("safetensors file is truncated: no header length")
    (n,) = struct.unpack("<Q", head)
    if n > limits.max_header_bytes:
        raise UploadError(f"safetensors header length is invalid: {n} bytes is over the limit "
                          f"of {limits.max_header_bytes}")
    if 8 + n > size:
        raise UploadError("safetensors file is truncated or its header length is invalid")
    raw = f.read(n)
    depth = _json_depth(raw)
    if depth > limits.max_depth:
        raise UploadError(f"safetensors header is nested {depth} deep; at most "
                          f"{limits.max_depth} is allowed")
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise UploadError(f"safetensors header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise UploadError("safetensors header must be a JSON object")
    return n, header


def inspect_safetensors_file(
    f: IO[bytes], size: int, limits: Limits = Limits()
) -> tuple[dict[str, Any], Findings]:
    """({name: {"dtype", "shape"}}, x/y value findings) for a well-formed file, else
    UploadError. `size` is the file's length in bytes."""
    n, header = safetensors_header(f, size, limits)
    entries = [(k, v) for k, v in header.items() if k != "__metadata__"]
    if len(entries) > limits.max_tensors:
        raise UploadError(f"safetensors file holds {len(entries)} tensors; at most "
                          f"{limits.max_tensors} are allowed")
    metadata = header.get("__metadata__")
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise UploadError("safetensors __metadata__ must map names to strings")
    body = size - 8 - n
    tensors: dict[str, Any] = {}
    ranges: list[tuple[int, int, str]] = []
    for name, info in entries:
        try:
            check_text(name)
        except ValueError as exc:
            raise UploadError(f"tensor {name!r}: its name {exc}") from None
        if len(name) > MAX_NAME:
            raise UploadError(f"tensor '{name[:50]}...': name longer than {MAX_NAME} characters")
        if not isinstance(info, dict):
            raise UploadError(f"tensor '{name}': entry must be an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
            raise UploadError(f"tensor '{name}': unsupported dtype {dtype!r}")
        if not (isinstance(shape, list) and all(is_int(d) and d >= 0 for d in shape)):
            raise UploadError(f"tensor '{name}': shape must be a list of non-negative ints")
        if len(shape) > limits.max_ndim:
            raise UploadError(f"tensor '{name}': {len(shape)} dimensions; at most "
                              f"{limits.max_ndim} are allowed")
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(is_int(o) for o in offsets)):
            raise UploadError(f"tensor '{name}': data_offsets must be [begin, end]")
        begin, end = offsets
        # Python integers: no overflow however large the declared shape.
        nbytes = math.prod(shape) * SAFETENSORS_DTYPES[dtype]
        if not 0 <= begin <= end <= body or end - begin != nbytes:
            raise UploadError(f"tensor '{name}': data_offsets do not match its shape and the file")
        ranges.append((begin, end, name))
        tensors[name] = {"dtype": dtype, "shape": shape}
    # The ranges must tile the data section: the format's own rule, and no byte read twice.
    position = 0
    for begin, end, name in sorted(ranges):
        if begin != position:
            problem = "overlaps the previous tensor" if begin < position else "leaves a gap"
            raise UploadError(f"tensor '{name}': data_offsets {problem} (at byte {begin})")
        position = end
    if position != body:
        raise UploadError("safetensors file has bytes no tensor accounts for (or is truncated)")
    values = Findings()
    if "x" in tensors and "y" in tensors:
        for name in ("x", "y"):
            kind = NUMPY_DTYPES.get(header[name]["dtype"])
            if kind is None:
                continue
            begin, end = header[name]["data_offsets"]
            f.seek(8 + n + begin)
            stream_values(f.read, end - begin, np.dtype(kind), name, values)
    return tensors, values



def _read_into(f: IO[bytes], out: np.ndarray) -> None:
    view, filled = out.data, 0  # 1-D uint8: one byte per item
    while filled < len(view):
        got = f.readinto(view[filled:])  # type: ignore[attr-defined]
        if not got:
            raise UploadError("safetensors file is truncated")
        filled += got


def read_safetensors(f: IO[bytes], size: int, names: Collection[str] | None = None
                     ) -> Iterator[tuple[str, str, list[int], np.ndarray]]:
    """(name, safetensors dtype, shape, raw bytes as uint8) of each tensor, or of those in
    `names`, in file order. `size` is the file's length in bytes."""
    n, header = safetensors_header(f, size, Limits())
    entries = sorted((info["data_offsets"][0], name, info) for name, info in header.items()
                     if name != "__metadata__" and (names is None or name in names))
    for begin, name, info in entries:
        end = info["data_offsets"][1]
        f.seek(8 + n + begin)
        raw = np.empty(end - begin, np.uint8)
        _read_into(f, raw)
        yield name, info["dtype"], list(info["shape"]), raw


def numpy_arrays(f: IO[bytes], size: int, names: Collection[str] | None = None
                 ) -> dict[str, np.ndarray]:
    """The tensors as numpy arrays; UploadError for a dtype numpy cannot hold (BF16, F8)."""
    out: dict[str, np.ndarray] = {}
    for name, dtype, shape, raw in read_safetensors(f, size, names):
        if dtype not in NUMPY_DTYPES:
            raise UploadError(f"tensor '{name}' is {dtype}, which numpy cannot hold")
        out[name] = raw.view(np.dtype(NUMPY_DTYPES[dtype])).reshape(shape)
    return out
