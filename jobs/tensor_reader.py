"""The tensors of a stored .safetensors upload, each read straight into its own buffer.

The worker reads uploads through the storage interface (a file object, not a path that could
be memory-mapped); reading the whole file and then parsing it would hold it twice. Here the
header is parsed with the upload checks' own bounds (jobs.uploads) and each tensor's bytes land
in a fresh uint8 array that the caller views as the tensor's dtype: memory holds the tensors
once. The file passed those checks at upload; a file cut short since is an UploadError.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from typing import IO

import numpy as np

from spartan_service.jobs.uploads import NUMPY_DTYPES, Limits, UploadError, safetensors_header


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
