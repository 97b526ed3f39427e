"""Tensors of a stored upload read one by one: the same arrays the safetensors library reads,
only those asked for, and a file cut short is refused."""

from __future__ import annotations

import io

import numpy as np
import pytest
from safetensors.numpy import load, save

from spartan_service.jobs.safetensors_file import numpy_arrays, read_safetensors
from spartan_service.jobs.uploads import UploadError

RNG = np.random.default_rng(0)
TENSORS = {
    "x": RNG.normal(size=(7, 3, 2)).astype(np.float32),
    "y": RNG.integers(0, 5, 7).astype(np.int64),
    "half": RNG.normal(size=5).astype(np.float16),
    "flags": np.array([True, False, True]),
    "empty": np.zeros((0, 4), np.float64),
    "u16": np.arange(6, dtype=np.uint16).reshape(2, 3),
}


def test_arrays_equal_the_libraries_and_only_those_asked_for_are_read() -> None:
    data = save(TENSORS)
    got = numpy_arrays(io.BytesIO(data), len(data))
    expected = load(data)
    assert set(got) == set(expected)
    for name, array in expected.items():
        assert got[name].dtype == array.dtype and np.array_equal(got[name], array), name
    some = read_safetensors(io.BytesIO(data), len(data), ("x", "y"))
    assert sorted((name, dtype, shape) for name, dtype, shape, _ in some) == [
        ("x", "F32", [7, 3, 2]), ("y", "I64", [7])]


def test_a_file_cut_short_or_of_a_dtype_numpy_lacks_is_refused() -> None:
    data = save(TENSORS)
    with pytest.raises(UploadError, match="truncated"):
        numpy_arrays(io.BytesIO(data[:-8]), len(data))
    header = b'{"w": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}'
    bf16 = len(header).to_bytes(8, "little") + header + bytes(4)
    with pytest.raises(UploadError, match="BF16, which numpy cannot hold"):
        numpy_arrays(io.BytesIO(bf16), len(bf16))
