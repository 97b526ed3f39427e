"""What every upload check shares: the bounds on what a file may declare, the error, and
array data read in chunks of whole items (fed to the dataset rules' findings), so that memory
stays within a small multiple of CHUNK whatever the file's size or how well it compresses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from spartan_service.jobs.dataset_rules import Findings

CHUNK = 1 << 20


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


def stream_values(read: Any, nbytes: int, dtype: np.dtype, name: str,
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


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
