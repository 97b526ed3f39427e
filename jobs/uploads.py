"""Checks of uploaded tensor files, without torch, without ever unpickling, in bounded memory.

The file is read from disk in chunks: memory stays within a small multiple of CHUNK whatever
the file's size or how well it compresses.

.safetensors: the header's size and nesting are bounded before it is parsed; every tensor's
dtype, shape and byte range are checked with exact integer arithmetic, and the ranges must
cover the data section exactly (sorted, no overlaps, no gaps).
.npz: the zip's central directory is bounded (member count, directory size) before zipfile
reads it; every member must be an .npy file whose header (parsed by numpy, without pickles)
declares a numeric dtype and a shape whose byte count matches the member's size; members are
decompressed in bounded chunks (never inflated whole) under a cap on the total unpacked size.
A file holding both `x` and `y` is a dataset: refused here if a job could not train on it (the
rules of jobs.dataset_rules, for classification), its values checked chunk by chunk.
"""

from __future__ import annotations

import io
import json
import math
import re
import struct
import zipfile
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
from numpy.lib import format as npy_format

from spartan_service.jobs import dataset_rules
from spartan_service.jobs.dataset_rules import Findings
from spartan_service.jobs.fields import check_text

SAFETENSORS_DTYPES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2,
    "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}
# safetensors dtypes numpy reads natively (for the dataset checks; others skip the value checks)
NUMPY_DTYPES = {
    "BOOL": "?", "U8": "u1", "I8": "i1", "I16": "<i2", "U16": "<u2", "F16": "<f2", "I32": "<i4",
    "U32": "<u4", "F32": "<f4", "I64": "<i8", "U64": "<u8", "F64": "<f8",
}
CHUNK = 1 << 20
MAX_NAME = 1000  # characters of a tensor's name
_EOCD = struct.Struct("<4s4H2LH")  # zip end-of-central-directory record
_CENTRAL_ENTRY = 46  # bytes of a central directory entry before its name and extras


@dataclass(frozen=True)
class Limits:
    """Bounds on what one upload may declare. The defaults admit any real weights or dataset
    file of the allowed upload size; a header of a million empty tensors does not pass."""

    max_header_bytes: int = 8 * 1024 * 1024  # safetensors JSON header
    max_tensors: int = 10_000  # tensors in a safetensors file, members in an npz
    max_depth: int = 4  # JSON nesting: {name: {"shape": [..]}} is 3
    max_ndim: int = 32
    max_unpacked_bytes: int = 1 << 30  # an npz's members, decompressed, all together
    max_npy_header: int = 10_000  # numpy's own default


class UploadError(ValueError):
    """The file is not a well-formed tensor file of an accepted kind."""


def kind_of(filename: str) -> str:
    lower = filename.lower()
    if lower.endswith(".safetensors"):
        return "safetensors"
    if lower.endswith(".npz"):
        return "npz"
    raise UploadError(f"file '{filename}': only .safetensors and .npz files are accepted")


# --- array data, read in chunks ------------------------------------------------------

def _stream_values(read: Any, nbytes: int, dtype: np.dtype, name: str,
                   values: Findings) -> None:
    """Read nbytes of array data through `read(n)`, in chunks of whole items."""
    step = max(dtype.itemsize, CHUNK // max(dtype.itemsize, 1) * dtype.itemsize)
    left = nbytes
    while left > 0:
        data = read(min(step, left))
        if not data:
            raise UploadError(f"array '{name}' is truncated")
        if len(data) % dtype.itemsize:
            # a short read mid-item: complete it so frombuffer sees whole items
            more = read(dtype.itemsize - len(data) % dtype.itemsize)
            data += more
            if len(data) % dtype.itemsize:
                raise UploadError(f"array '{name}' is truncated")
        left -= len(data)
        if name in ("x", "y"):
            values.feed(name, np.frombuffer(data, dtype=dtype))
    if left < 0:
        raise UploadError(f"array '{name}' holds more bytes than its shape")


def check_dataset(xs: list[int], ys: list[int], values: Findings | None = None) -> None:
    """The dataset rules (jobs.dataset_rules) for a classification job, as an UploadError."""
    try:
        dataset_rules.check_shapes(xs, ys)
        if values is not None:
            dataset_rules.check_values(values)
    except dataset_rules.DatasetError as exc:
        raise UploadError(f"data: {exc}") from None


# --- safetensors ----------------------------------------------------------------------

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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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
        if not (isinstance(shape, list) and all(_is_int(d) and d >= 0 for d in shape)):
            raise UploadError(f"tensor '{name}': shape must be a list of non-negative ints")
        if len(shape) > limits.max_ndim:
            raise UploadError(f"tensor '{name}': {len(shape)} dimensions; at most "
                              f"{limits.max_ndim} are allowed")
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(_is_int(o) for o in offsets)):
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
            _stream_values(f.read, end - begin, np.dtype(kind), name, values)
    return tensors, values


def inspect_safetensors(data: bytes, limits: Limits = Limits()) -> dict[str, Any]:
    return inspect_safetensors_file(io.BytesIO(data), len(data), limits)[0]


# --- npz --------------------------------------------------------------------------------

def _check_central_directory(f: IO[bytes], size: int, limits: Limits) -> None:
    """Bound the member count and directory size from the end record, before zipfile reads
    the whole directory into objects."""
    tail_len = min(size, _EOCD.size + 65535)
    f.seek(size - tail_len)
    tail = f.read(tail_len)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + _EOCD.size > len(tail):
        raise UploadError("not a readable .npz without pickles: no zip end record")
    _, _, _, _, total, cd_size, _, _ = _EOCD.unpack(tail[at : at + _EOCD.size])
    if total == 0xFFFF or cd_size == 0xFFFFFFFF:
        raise UploadError("npz: zip64 archives (over 65535 members or 4 GiB) are not accepted")
    if total > limits.max_tensors:
        raise UploadError(f"npz holds {total} members; at most {limits.max_tensors} are allowed")
    if cd_size > total * (_CENTRAL_ENTRY + 3 * 65535):
        raise UploadError("not a readable .npz without pickles: its zip directory is malformed")
    f.seek(0)


class _Counted:
    """A member stream that counts what it hands out (the header's length, and the cap)."""

    def __init__(self, raw: IO[bytes], budget: list[int], name: str) -> None:
        self.raw, self.budget, self.name, self.count = raw, budget, name, 0

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            n = CHUNK  # never "read everything"
        data = self.raw.read(min(n, CHUNK))
        self.count += len(data)
        self.budget[0] -= len(data)
        if self.budget[0] < 0:
            raise UploadError("npz: unpacked members exceed the limit")
        return data


def _npy_header(stream: _Counted, name: str, limits: Limits) -> tuple[list[int], np.dtype]:
    try:
        version = npy_format.read_magic(stream)  # type: ignore[no-untyped-call]
        if version == (1, 0):
            shape, _, dtype = npy_format.read_array_header_1_0(  # type: ignore[no-untyped-call]
                stream, max_header_size=limits.max_npy_header)
        elif version == (2, 0):
            shape, _, dtype = npy_format.read_array_header_2_0(  # type: ignore[no-untyped-call]
                stream, max_header_size=limits.max_npy_header)
        else:
            raise UploadError(f"array '{name}': .npy format version {version} is not accepted")
    except UploadError:
        raise
    except (ValueError, TypeError, SyntaxError, EOFError, OverflowError) as exc:
        raise UploadError(f"array '{name}': not a readable .npy header: {exc}") from None
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise UploadError(f"array '{name}': object arrays (pickles) are refused; "
                          "save the file without pickles")
    if dtype.kind not in "biuf":
        raise UploadError(f"array '{name}': dtype {dtype} is not numeric")
    if len(shape) > limits.max_ndim or not all(_is_int(d) and d >= 0 for d in shape):
        raise UploadError(f"array '{name}': shape {shape} is not accepted")
    return list(shape), dtype


def inspect_npz_file(
    f: IO[bytes], size: int, limits: Limits = Limits()
) -> tuple[dict[str, Any], Findings]:
    """({name: {"dtype", "shape"}}, x/y value findings) for a well-formed .npz, else
    UploadError. Members are streamed; nothing is unpickled or inflated whole."""
    _check_central_directory(f, size, limits)
    tensors: dict[str, Any] = {}
    values = Findings()
    try:
        with zipfile.ZipFile(f) as archive:
            members = archive.infolist()
            declared = sum(m.file_size for m in members)
            if declared > limits.max_unpacked_bytes:
                raise UploadError(f"npz members unpack to {declared} bytes; at most "
                                  f"{limits.max_unpacked_bytes} are allowed")
            budget = [limits.max_unpacked_bytes]
            for member in members:
                if not member.filename.endswith(".npy") or member.is_dir():
                    raise UploadError(f"npz member '{member.filename}' is not an .npy array")
                if member.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                    raise UploadError(f"npz member '{member.filename}': compression "
                                      f"{member.compress_type} is not accepted")
                name = member.filename[: -len(".npy")]
                if name in tensors:
                    raise UploadError(f"npz holds array '{name}' twice")
                with archive.open(member) as raw:
                    stream = _Counted(raw, budget, name)
                    shape, dtype = _npy_header(stream, name, limits)
                    nbytes = math.prod(shape) * dtype.itemsize
                    if stream.count + nbytes != member.file_size:
                        raise UploadError(f"array '{name}': its header declares {nbytes} bytes "
                                          f"of data but the member holds "
                                          f"{member.file_size - stream.count}")
                    _stream_values(stream.read, nbytes, dtype, name, values)
                    # reading to the end makes zipfile check the member's CRC
                    if raw.read(1):
                        raise UploadError(f"array '{name}' holds more bytes than its shape")
                tensors[name] = {"dtype": str(dtype), "shape": shape}
    except UploadError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, KeyError, NotImplementedError,
            RuntimeError) as exc:
        raise UploadError(f"not a readable .npz without pickles: {exc}") from None
    return tensors, values


# --- entry points -----------------------------------------------------------------------

def inspect_file(
    filename: str, f: IO[bytes], size: int, limits: Limits = Limits()
) -> tuple[str, dict[str, Any]]:
    """(kind, {name: {"dtype", "shape"}}) of an uploaded file open for binary reading."""
    kind = kind_of(filename)
    if kind == "safetensors":
        tensors, values = inspect_safetensors_file(f, size, limits)
    else:
        tensors, values = inspect_npz_file(f, size, limits)
    if not tensors:
        raise UploadError("file holds no tensors")
    if "x" in tensors and "y" in tensors:
        check_dataset(tensors["x"]["shape"], tensors["y"]["shape"], values)
    return kind, tensors


def inspect(filename: str, data: bytes, limits: Limits = Limits()) -> tuple[str, dict[str, Any]]:
    return inspect_file(filename, io.BytesIO(data), len(data), limits)


def summary(tensors: dict[str, Any], keep: int = 8) -> dict[str, Any]:
    """A bounded view of an upload's tensors for listings: the first few, and how many."""
    names = list(tensors)[:keep]
    return {name: tensors[name] for name in names}
