"""A job's files on a `Storage` (jobs.storage): its public artifacts, which the API lists and
serves, and its private checkpoint, which it never does."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from spartan_service.jobs.storage import (
    PRIVATE,
    PUBLIC,
    FileStorage,
    Storage,
    check_name,
    write_atomic,
)

__all__ = ["ArtifactStore", "check_name", "write_atomic"]


class ArtifactStore:
    def __init__(self, storage: Storage | Path) -> None:
        self.storage = storage if isinstance(storage, Storage) else FileStorage(Path(storage))

    # -- public artifacts ---------------------------------------------------------------
    def write_bytes(self, job_id: str, name: str, data: bytes) -> None:
        self.storage.put(PUBLIC, job_id, name, data)

    def exists(self, job_id: str, name: str) -> bool:
        return self.storage.exists(PUBLIC, job_id, name)

    def read_bytes(self, job_id: str, name: str) -> bytes:
        """FileNotFoundError when the job has no such artifact."""
        return self.storage.read(PUBLIC, job_id, name)

    def open(self, job_id: str, name: str) -> BinaryIO:
        return self.storage.open(PUBLIC, job_id, name)

    def size(self, job_id: str, name: str) -> int:
        return self.storage.size(PUBLIC, job_id, name)

    def list(self, job_id: str) -> list[dict[str, int | str]]:
        return [{"name": e.name, "size": e.size} for e in self.storage.list(PUBLIC, job_id)]

    def iter_file(self, job_id: str, name: str, chunk: int = 1 << 20) -> Iterator[bytes]:
        with self.open(job_id, name) as f:
            while block := f.read(chunk):
                yield block

    def remove(self, job_id: str) -> None:
        """Everything of the job, public and private."""
        self.storage.delete(PUBLIC, job_id)
        self.storage.delete(PRIVATE, job_id)

    # -- the job's private state (checkpoints) ------------------------------------------
    def write_private(self, job_id: str, name: str, data: bytes) -> None:
        self.storage.put(PRIVATE, job_id, name, data)

    def read_private(self, job_id: str, name: str) -> bytes | None:
        try:
            return self.storage.read(PRIVATE, job_id, name)
        except FileNotFoundError:
            return None

    def delete_private(self, job_id: str, name: str) -> None:
        self.storage.delete(PRIVATE, job_id, name)
