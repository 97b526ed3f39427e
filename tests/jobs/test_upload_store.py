"""The upload store on the filesystem backend: streamed writes appear whole or not at all,
crash leftovers are swept, uploads of earlier versions are adopted."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from spartan_service.jobs.storage import FileStorage
from spartan_service.jobs.upload_store import StoredUpload, UploadStore


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_a_streamed_upload_is_seen_only_once_committed(tmp_path: Path) -> None:
    store = UploadStore(tmp_path)
    writer = store.writer("up1")
    writer.write(b"abc")
    writer.write(b"def")
    assert not store.exists("up1")
    writer.commit()
    with store.open("up1") as f:
        assert f.read() == b"abcdef"
    assert store.size("up1") == 6
    with pytest.raises(RuntimeError), store.writer("up2") as failing:
        failing.write(b"half")
        raise RuntimeError("client went away")
    assert not store.exists("up2") and files(tmp_path) == [".uploads/up1/file"]
    store.delete("up1")
    assert files(tmp_path) == []


def test_crash_leftovers_are_swept_and_uploads_in_progress_kept(tmp_path: Path) -> None:
    store = UploadStore(FileStorage(tmp_path))
    for upload_id in ("kept", "orphan", "fresh"):
        with store.writer(upload_id) as w:
            w.write(b"x")
    store.writer("crashed").write(b"partial")  # never committed
    store.writer("kept").write(b"partial")
    old = time.time() - 3600
    for p in [*tmp_path.rglob("*")]:
        if "fresh" not in str(p):
            os.utime(p, (old, old))
    assert sorted(store.sweep({"kept"})) == ["crashed", "orphan"]
    assert files(tmp_path) == [".uploads/fresh/file", ".uploads/kept/file"]


def test_uploads_of_earlier_versions_are_adopted(tmp_path: Path) -> None:
    legacy = tmp_path / "uploads"
    legacy.mkdir()
    (legacy / "abc.npz").write_bytes(b"data")
    (legacy / "unknown.npz").write_bytes(b"other")
    store = UploadStore(tmp_path / "artifacts")
    assert store.adopt(legacy, {"abc"}) == 1
    with StoredUpload(store, "abc", "npz").open() as f:
        assert f.read() == b"data"
    assert sorted(p.name for p in legacy.iterdir()) == ["unknown.npz"]
    with pytest.raises(ValueError, match="missing from the upload store"):
        StoredUpload(store, "gone", "npz").open()
