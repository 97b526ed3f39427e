"""Upload checks: well-formed safetensors and npz pass; truncated, malformed, non-numeric and
pickled files are refused without ever being unpickled."""

from __future__ import annotations

import io
import json
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save

from jobs.uploads import UploadError, inspect, kind_of, upload_path


def st_bytes(header: dict[str, Any], body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


GOOD_ST = save({"x": np.ones((4, 3), np.float32), "y": np.arange(4, dtype=np.int64)})


def npz(**arrays: Any) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_well_formed_files_are_described() -> None:
    kind, tensors = inspect("data.safetensors", GOOD_ST)
    assert kind == "safetensors"
    assert tensors == {"x": {"dtype": "F32", "shape": [4, 3]}, "y": {"dtype": "I64", "shape": [4]}}
    kind, tensors = inspect("d.NPZ", npz(x=np.zeros((2, 5)), y=np.array([0, 1])))
    assert kind == "npz" and tensors["x"] == {"dtype": "float64", "shape": [2, 5]}


@pytest.mark.parametrize(("data", "needle"), [
    (b"", "no header length"),
    (GOOD_ST[:5], "no header length"),
    (GOOD_ST[:20], "truncated or its header length is invalid"),
    (GOOD_ST[:-1], "data_offsets do not match"),
    (GOOD_ST + b"\0", "bytes no tensor accounts for"),
    (struct.pack("<Q", 2**40) + b"{}", "header length is invalid"),
    (struct.pack("<Q", 4) + b"nope", "not valid JSON"),
    (st_bytes([], b""), "must be a JSON object"),  # type: ignore[arg-type]
    (st_bytes({}, b""), "holds no tensors"),
    (st_bytes({"x": 3}, b""), "entry must be an object"),
    (st_bytes({"x": {"dtype": "OBJ", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8),
     "unsupported dtype"),
    (st_bytes({"x": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4),
     "shape must be a list"),
    (st_bytes({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0]}}, b"\0" * 8),
     "data_offsets must be"),
    (st_bytes({"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8),
     "do not match its shape"),
])
def test_malformed_safetensors_are_refused(data: bytes, needle: str) -> None:
    with pytest.raises(UploadError, match=needle):
        inspect("w.safetensors", data)


class Evil:
    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.mkdir, (Path("/tmp/spartan-pickle-was-run"),))


def test_npz_with_pickles_is_refused_without_unpickling(tmp_path: Path) -> None:
    marker = Path("/tmp/spartan-pickle-was-run")
    objects = npz(x=np.array([Evil(), 1], dtype=object), y=np.array([0, 1]))
    with pytest.raises(UploadError, match="without pickles"):
        inspect("d.npz", objects)
    with pytest.raises(UploadError):
        inspect("d.npz", pickle.dumps(Evil()))  # a bare pickle under an .npz name
    assert not marker.exists()


@pytest.mark.parametrize(("data", "needle"), [
    (npz(x=np.array(["a", "b"]), y=np.array([0, 1])), "is not numeric"),
    (npz(x=np.zeros(3))[:40], "not a readable .npz"),
    (b"PK\x03\x04garbage", "not a readable .npz"),
    (npz(), "holds no tensors"),
])
def test_malformed_npz_is_refused(data: bytes, needle: str) -> None:
    with pytest.raises(UploadError, match=needle):
        inspect("d.npz", data)


def test_kinds_and_paths(tmp_path: Path) -> None:
    with pytest.raises(UploadError, match="only .safetensors and .npz"):
        kind_of("model.pt")
    assert upload_path(tmp_path, "abc123", "npz") == tmp_path / "abc123.npz"
    with pytest.raises(UploadError):
        upload_path(tmp_path, "../etc", "npz")
