"""Uploads in bounded memory: a real API process (uvicorn) receives a large file and a highly
compressible .npz; its peak resident memory (the kernel's VmHWM) grows by far less than either.

TestClient reads a request body whole before the app sees it, so only a served process shows
what the API itself holds.
"""

from __future__ import annotations

import io
import struct
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from numpy.lib import format as npy_format

from tests.service.served import served

MIB = 1 << 20
BOUNDARY = "spartan-test-boundary"


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def multipart(name: str, parts: Iterator[bytes]) -> Iterator[bytes]:
    yield (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
           f'filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n').encode()
    yield from parts
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def big_safetensors(nbytes: int) -> Iterator[bytes]:
    header = (b'{"w": {"dtype": "U8", "shape": [%d], "data_offsets": [0, %d]}}'
              % (nbytes, nbytes))
    yield struct.pack("<Q", len(header)) + header
    chunk = bytes(range(256)) * (MIB // 256)
    for _ in range(nbytes // MIB):
        yield chunk


def npz_bomb(rows: int, cols: int) -> bytes:
    """x: rows x cols float32 zeros and y: rows int64 zeros, deflated: megabytes of zip for
    hundreds of megabytes of arrays. Written member by member, never whole in memory."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, descr, shape in (("x", "<f4", (rows, cols)), ("y", "<i8", (rows,))):
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                npy_format.write_array_header_1_0(
                    member, {"descr": descr, "fortran_order": False, "shape": shape})
                left = rows * (cols * 4 if name == "x" else 8)
                zeros = bytes(4 * MIB)
                while left:
                    member.write(zeros[: min(left, len(zeros))])
                    left -= min(left, len(zeros))
    return buf.getvalue()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    with served(tmp_path, SPARTAN_MAX_UPLOAD_BYTES=str(512 * MIB)) as running:
        yield running


def post(url: str, name: str, parts: Iterator[bytes]) -> httpx.Response:
    return httpx.post(f"{url}/v1/uploads", content=multipart(name, parts), timeout=300,
                      headers={"content-type": f"multipart/form-data; boundary={BOUNDARY}"})


def test_large_upload_and_npz_bomb_stay_in_bounded_memory(
    server: tuple[str, subprocess.Popen[bytes]],
) -> None:
    url, proc = server
    # Warm up every code path first (imports, the store, the threadpool) at a small size.
    assert post(url, "w.safetensors", big_safetensors(MIB)).status_code == 201
    assert post(url, "d.npz", iter([npz_bomb(1024, 64)])).status_code == 201
    before = peak_rss(proc.pid)

    large = post(url, "w.safetensors", big_safetensors(160 * MIB))
    assert large.status_code == 201, large.text
    assert large.json()["size"] > 160 * MIB
    bomb = npz_bomb(1 << 20, 64)  # 256 MiB of x once unpacked
    assert len(bomb) < 2 * MIB
    accepted = post(url, "d.npz", iter([bomb]))
    assert accepted.status_code == 201, accepted.text
    assert accepted.json()["tensors"]["x"] == {"dtype": "float32", "shape": [1 << 20, 64]}

    grown = peak_rss(proc.pid) - before
    print(f"peak RSS grew by {grown / MIB:.1f} MiB")
    assert grown < 40 * MIB, f"peak RSS grew by {grown / MIB:.0f} MiB"
