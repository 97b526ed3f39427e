"""The artifact store: atomic writes, listing, names that cannot escape the job's folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jobs.artifacts import ArtifactStore


def test_write_read_list_stream_remove(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    assert store.list("job1") == [] and not store.exists("job1", "a.json")
    store.write_bytes("job1", "a.json", b"{}")
    store.write_bytes("job1", "b.bin", b"x" * 3_000_000)
    store.write_bytes("job1", "a.json", b'{"v": 2}')  # overwritten in place
    assert store.read_bytes("job1", "a.json") == b'{"v": 2}'
    assert store.list("job1") == [{"name": "a.json", "size": 8},
                                  {"name": "b.bin", "size": 3_000_000}]
    assert b"".join(store.iter_file("job1", "b.bin", chunk=1 << 20)) == b"x" * 3_000_000
    assert not [p for p in store.job_dir("job1").iterdir() if p.name.startswith(".tmp")]
    store.remove("job1")
    assert store.list("job1") == []


@pytest.mark.parametrize("name", ["../x", "..", ".hidden", "a/b", "", "a" * 201, "x\x00y",
                                  "a..b"])
def test_names_that_could_escape_are_refused(tmp_path: Path, name: str) -> None:
    store = ArtifactStore(tmp_path)
    with pytest.raises(ValueError, match="invalid artifact name"):
        store.write_bytes("job1", name, b"")
    with pytest.raises(ValueError, match="invalid artifact name"):
        store.path(name, "ok.json")


def test_a_failed_write_leaves_the_old_file(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    store = ArtifactStore(tmp_path)
    store.write_bytes("job1", "a.json", b"old")

    def crash(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        store.write_bytes("job1", "a.json", b"new")
    assert store.read_bytes("job1", "a.json") == b"old"
    assert [p.name for p in store.job_dir("job1").iterdir()] == ["a.json"]
