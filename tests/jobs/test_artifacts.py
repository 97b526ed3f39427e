"""The artifact store: atomic writes, listing, names that cannot escape the job's folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from spartan_service.jobs.artifacts import ArtifactStore
from tests.files import artifact_file


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
    assert not [p for p in artifact_file(store, "job1").iterdir() if p.name.startswith(".tmp")]
    store.remove("job1")
    assert store.list("job1") == []


@pytest.mark.parametrize("name", ["../x", "..", ".hidden", "a/b", "", "a" * 201, "x\x00y",
                                  "a..b"])
def test_names_that_could_escape_are_refused(tmp_path: Path, name: str) -> None:
    store = ArtifactStore(tmp_path)
    with pytest.raises(ValueError, match="invalid artifact name"):
        store.write_bytes("job1", name, b"")
    with pytest.raises(ValueError, match="invalid artifact name"):
        store.read_bytes(name, "ok.json")


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
    assert [p.name for p in artifact_file(store, "job1").iterdir()] == ["a.json"]


def test_private_files_are_neither_listed_nor_readable_as_artifacts(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    store.write_bytes("job1", "report.json", b"{}")
    store.write_private("job1", "checkpoint.safetensors", b"state")
    assert store.list("job1") == [{"name": "report.json", "size": 2}]
    assert not store.exists("job1", "checkpoint.safetensors")
    with pytest.raises(FileNotFoundError):
        store.read_bytes("job1", "checkpoint.safetensors")
    assert store.read_private("job1", "checkpoint.safetensors") == b"state"
    store.delete_private("job1", "checkpoint.safetensors")
    assert store.read_private("job1", "checkpoint.safetensors") is None
    store.write_private("job1", "checkpoint.safetensors", b"state")
    store.remove("job1")  # a deleted job leaves nothing behind, private files included
    assert store.read_private("job1", "checkpoint.safetensors") is None
    assert store.list("job1") == []
