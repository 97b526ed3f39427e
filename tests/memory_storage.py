"""A second `Storage` backend, in memory and with no paths at all: what the service does
through it shows that callers need nothing of the filesystem (object storage is one more class
like this)."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import BinaryIO

from spartan_service.jobs.storage import BlobWriter, Entry, Storage, check_name

Key = tuple[str, str, str]


class MemoryStorage(Storage):
    def __init__(self) -> None:
        self.blobs: dict[Key, bytes] = {}
        self.touched: dict[tuple[str, str], float] = {}
        self.writing: set[Key] = set()  # writers neither committed nor aborted

    def _key(self, space: str, owner: str, name: str) -> Key:
        return space, check_name(owner), check_name(name)

    def put(self, space: str, owner: str, name: str, data: bytes) -> None:
        self.blobs[self._key(space, owner, name)] = bytes(data)
        self.touched[space, owner] = time.time()

    def put_file(self, space: str, owner: str, name: str, source: Path) -> None:
        self.put(space, owner, name, source.read_bytes())
        source.unlink()

    def writer(self, space: str, owner: str, name: str) -> BlobWriter:
        return _MemoryWriter(self, self._key(space, owner, name))

    def open(self, space: str, owner: str, name: str) -> BinaryIO:
        try:
            return io.BytesIO(self.blobs[self._key(space, owner, name)])
        except KeyError:
            raise FileNotFoundError(f"{space}/{owner}/{name}") from None

    def size(self, space: str, owner: str, name: str) -> int:
        try:
            return len(self.blobs[self._key(space, owner, name)])
        except KeyError:
            raise FileNotFoundError(f"{space}/{owner}/{name}") from None

    def list(self, space: str, owner: str) -> list[Entry]:
        return sorted((Entry(n, len(b)) for (s, o, n), b in self.blobs.items()
                       if (s, o) == (space, owner)), key=lambda e: e.name)

    def delete(self, space: str, owner: str, name: str | None = None) -> None:
        for key in [k for k in self.blobs if k[:2] == (space, owner)
                    and (name is None or k[2] == name)]:
            del self.blobs[key]

    def sweep(self, space: str, keep: set[str], older_than_s: float) -> list[str]:
        cutoff = time.time() - older_than_s
        stale = sorted({o for (s, o, _) in self.blobs if s == space and o not in keep
                        and self.touched.get((s, o), 0.0) < cutoff})
        for owner in stale:
            self.delete(space, owner)
        return stale


class _MemoryWriter(BlobWriter):
    def __init__(self, storage: MemoryStorage, key: Key) -> None:
        self.storage, self.key, self.buffer = storage, key, io.BytesIO()
        storage.writing.add(key)

    def write(self, data: bytes) -> None:
        self.buffer.write(data)

    def commit(self) -> None:
        self.storage.put(*self.key, self.buffer.getvalue())
        self.storage.writing.discard(self.key)

    def abort(self) -> None:
        self.storage.writing.discard(self.key)
