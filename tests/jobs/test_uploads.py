"""Upload checks: well-formed safetensors and npz pass; truncated, malformed, non-numeric and
pickled files are refused without ever being unpickled."""

from __future__ import annotations

import io
import json
import pickle
import re
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save

from spartan_service.jobs.uploads import Limits, UploadError, inspect, kind_of


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


def test_kinds() -> None:
    with pytest.raises(UploadError, match="only .safetensors and .npz"):
        kind_of("model.pt")
    assert kind_of("D.NPZ") == "npz"


# --- bounded checks: declared sizes, exact arithmetic, tiling, nesting, zip bombs ---------

def npy_member(shape: tuple[int, ...], descr: str = "<f4", data: bytes = b"") -> bytes:
    """An .npy file whose header declares `shape`, followed by `data` (whatever its length)."""
    from numpy.lib import format as npy_format

    buf = io.BytesIO()
    npy_format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False,
                                            "shape": shape})
    return buf.getvalue() + data


def zip_of(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buf.getvalue()


def tensor(dtype: str, shape: list[Any], offsets: list[Any]) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data_offsets": offsets}


@pytest.mark.parametrize(("data", "needle"), [
    (zip_of({"x.npy": npy_member((2,), data=b"\0" * 8), "notes.txt": b"hi"}),
     "'notes.txt' is not an .npy array"),
    (zip_of({"x.npy": npy_member((30_000_000_000,))}), "declares 120000000000 bytes"),
    (zip_of({"x.npy": npy_member((2**40, 2**40), data=b"\0" * 8)}),  # > int64 elements
     "declares 4835703278458516698824704 bytes"),
    (zip_of({"x.npy": npy_member((2,), descr="|O", data=b"\0" * 16)}), "without pickles"),
    (zip_of({"x.npy": b"not an npy file at all"}), "not a readable .npy header"),
    (zip_of({f"a{i}.npy": npy_member((0,)) for i in range(12)}), "at most 10 are allowed"),
    (zip_of({"x.npy": npy_member((50_000,), data=b"\0" * 200_000)}), "unpack to 200128 bytes"),
])
def test_npz_checks_are_bounded(data: bytes, needle: str) -> None:
    limits = Limits(max_tensors=10, max_unpacked_bytes=100_000)
    with pytest.raises(UploadError, match=re.escape(needle)):
        inspect("d.npz", data, limits)


def test_npz_bomb_is_refused_without_inflating_it() -> None:
    # 64 MiB of zeros in 64 KiB of zip, under a 16 MiB cap: refused from the declared sizes
    # before anything is unpacked...
    bomb = zip_of({"x.npy": npy_member((16 << 20,), data=bytes(64 << 20))})
    assert len(bomb) < 200_000
    with pytest.raises(UploadError, match="at most 16777216 are allowed"):
        inspect("bomb.npz", bomb, Limits(max_unpacked_bytes=16 << 20))
    # ... and when a member lies about its size, zipfile stops at the declared size and the
    # checksum no longer matches.
    honest = zip_of({"x.npy": npy_member((4,), data=bytes(16))}, zipfile.ZIP_STORED)
    liar = honest.replace(struct.pack("<I", len(npy_member((4,))) + 16),
                          struct.pack("<I", len(npy_member((4,))) + 8))
    with pytest.raises(UploadError):
        inspect("liar.npz", liar)


def test_large_compressible_npz_is_accepted_chunk_by_chunk() -> None:
    data = npz(x=np.zeros((4096, 1024), np.float32), y=np.zeros(4096, np.int64))  # 16 MiB
    kind, tensors = inspect("d.npz", data)
    assert tensors["x"] == {"dtype": "float32", "shape": [4096, 1024]}


def test_npz_values_are_checked_across_chunks() -> None:
    x = np.zeros((4096, 128), np.float32)  # 2 MiB: spans chunks
    x[-1, -1] = np.nan
    with pytest.raises(UploadError, match="NaN"):
        inspect("d.npz", npz(x=x, y=np.zeros(4096, np.int64)))
    y = np.zeros(4096, np.int64)
    y[-1] = -3
    with pytest.raises(UploadError, match=">= 0"):
        inspect("d.npz", npz(x=np.zeros((4096, 2), np.float32), y=y))


@pytest.mark.parametrize(("header", "body", "needle"), [
    # shape whose element count overflows int64: exact arithmetic, never a wrap-around match
    ({"x": tensor("F32", [2**62, 2**62, 4], [0, 0])}, b"", "do not match its shape"),
    ({"x": tensor("F32", [True], [0, 4])}, b"\0" * 4, "shape must be a list"),
    ({"x": tensor("F32", [1], [0, 4]), "y": tensor("F32", [1], [2, 6])}, b"\0" * 6,
     "overlaps the previous tensor"),
    ({"x": tensor("F32", [1], [0, 4]), "y": tensor("F32", [1], [8, 12])}, b"\0" * 12,
     "leaves a gap"),
    ({"x": tensor("F32", [1], [0, 4]), "y": tensor("F32", [1], [0, 4])}, b"\0" * 4,
     "overlaps"),
    ({"__metadata__": {"a": 1}, "x": tensor("F32", [1], [0, 4])}, b"\0" * 4,
     "__metadata__ must map names to strings"),
    ({f"t{i}": tensor("F32", [0], [0, 0]) for i in range(11)}, b"", "11 tensors; at most 10"),
    ({"x": tensor("F32", [1] * 40, [0, 4])}, b"\0" * 4, "40 dimensions"),
])
def test_safetensors_checks_are_exact_and_bounded(header: dict[str, Any], body: bytes,
                                                  needle: str) -> None:
    with pytest.raises(UploadError, match=re.escape(needle)):
        inspect("w.safetensors", st_bytes(header, body), Limits(max_tensors=10))


def test_deeply_nested_safetensors_header_is_refused_unparsed() -> None:
    raw = b'{"__metadata__": {"a": ' + b"[" * 100_000 + b"]" * 100_000 + b'}, "x": {}}'
    data = struct.pack("<Q", len(raw)) + raw
    with pytest.raises(UploadError, match="nested 100002 deep; at most 4"):
        inspect("w.safetensors", data)
    raw = (b'{"__metadata__": {"s": "[[[[[[\\"["}, '
           b'"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}')
    assert inspect("w.safetensors", struct.pack("<Q", len(raw)) + raw + bytes(4))  # in a string


def test_safetensors_header_over_the_limit_is_refused_unparsed() -> None:
    data = struct.pack("<Q", 9 << 20) + b" " * (9 << 20)
    with pytest.raises(UploadError, match="over the limit"):
        inspect("w.safetensors", data)


def test_zero_size_tensors_share_an_offset() -> None:
    header = {"e": tensor("F32", [0], [0, 0]), "x": tensor("F32", [1], [0, 4]),
              "z": tensor("F32", [0, 3], [4, 4])}
    assert set(inspect("w.safetensors", st_bytes(header, b"\0" * 4))[1]) == {"e", "x", "z"}
