""".npz files checked at upload without pickles, in bounded memory: the zip's central directory
is bounded (member count, directory size) before zipfile reads it; every member must be an .npy
file whose header (parsed by numpy, without pickles) declares a numeric dtype and a shape whose
byte count matches the member's size; members are decompressed in bounded chunks (never
inflated whole) under a cap on the total unpacked size, a dataset's `x` and `y` values streamed
into the dataset rules' findings."""

from __future__ import annotations

import math
import struct
import zipfile
from typing import IO, Any

import numpy as np
from numpy.lib import format as npy_format

from spartan_service.jobs.dataset_rules import Findings
from spartan_service.jobs.upload_limits import CHUNK, Limits, UploadError, is_int, stream_values

_EOCD = struct.Struct("<4s4H2LH")  # zip end-of-central-directory record
_CENTRAL_ENTRY = 46  # bytes of a central directory entry before its name and extras


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
    if len(shape) > limits.max_ndim or not all(is_int(d) and d >= 0 for d in shape):
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
                    stream_values(stream.read, nbytes, dtype, name, values)
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
