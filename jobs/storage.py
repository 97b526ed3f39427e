"""Where job files live: a small storage interface and its filesystem backend.

Callers name a blob by (space, owner, name), e.g. ("artifacts", JOB_ID, "report.json"), and
put, open, list or delete it; no caller ever sees a backend's path, so object storage is one
more `Storage` class. Spaces:
- `artifacts` (PUBLIC): what a job publishes, listed and downloadable through the API;
- `checkpoints` (PRIVATE): a running job's resumable state, never listed or served;
- `uploads` (UPLOADS): the bytes of uploaded files, owner the upload id (jobs.upload_store).

`FileStorage` keeps the public space at ROOT/OWNER/NAME (the layout earlier versions wrote,
so existing data directories keep working) and every other space at ROOT/.SPACE/OWNER/NAME,
a folder no owner id can name (ids start with a letter or digit).
"""

from __future__ import annotations

import builtins
import os
import re
import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

PUBLIC = "artifacts"
PRIVATE = "checkpoints"
UPLOADS = "uploads"
SPACES = (PUBLIC, PRIVATE, UPLOADS)
PARTIAL_PREFIX = ".part-"  # a blob being written: never listed, swept after a crash
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


def check_name(name: str) -> str:
    """An owner id or a file name: letters, digits, '.', '_', '-'; no path, no '..'."""
    if not _NAME.match(name) or ".." in name:
        raise ValueError(f"invalid artifact name {name!r}")
    return name


def write_atomic(path: Path, data: bytes) -> None:
    """Readers see the old file or the new one, never half of it, and after a crash (power
    loss included) the new one or none: the data is on disk before the rename publishes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class BlobWriter:
    """A blob written as a stream: invisible until `commit` (then atomic, like `put`);
    `abort`, or leaving a `with` block by an exception, discards it. Not thread-safe."""

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def commit(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, kind: object, *_: object) -> None:
        if kind is None:
            self.commit()
        else:
            self.abort()


@dataclass(frozen=True)
class Entry:
    name: str
    size: int


class Storage(ABC):
    """Named blobs in spaces, grouped by owner. Writes are atomic: a reader sees the old blob
    or the new one. `open` and `size` raise FileNotFoundError for a missing blob."""

    @abstractmethod
    def put(self, space: str, owner: str, name: str, data: bytes) -> None: ...

    @abstractmethod
    def put_file(self, space: str, owner: str, name: str, source: Path) -> None:
        """Move a finished local file in (it is consumed: renamed, or copied and removed)."""

    @abstractmethod
    def writer(self, space: str, owner: str, name: str) -> BlobWriter:
        """Write a blob in chunks, in bounded memory (see BlobWriter)."""

    @abstractmethod
    def open(self, space: str, owner: str, name: str) -> BinaryIO:
        """The blob for reading; seekable (file checks read a zip's end first)."""

    @abstractmethod
    def size(self, space: str, owner: str, name: str) -> int: ...

    @abstractmethod
    def list(self, space: str, owner: str) -> list[Entry]: ...

    @abstractmethod
    def delete(self, space: str, owner: str, name: str | None = None) -> None:
        """One blob, or every blob of the owner in the space; missing ones are no error."""

    @abstractmethod
    def sweep(self, space: str, keep: set[str], older_than_s: float) -> builtins.list[str]:
        """Delete what a crash left in the space: every owner not in `keep` untouched for
        older_than_s (a writer in another process keeps its owner fresh), and partial blobs
        that old. The owners deleted."""

    def read(self, space: str, owner: str, name: str) -> bytes:
        with self.open(space, owner, name) as f:
            return f.read()

    def exists(self, space: str, owner: str, name: str) -> bool:
        try:
            self.size(space, owner, name)
        except FileNotFoundError:
            return False
        return True


class FileStorage(Storage):
    """A directory on a local disk or a shared volume (see the module doc for the layout)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)  # the backend's own: callers of Storage never see it

    def _folder(self, space: str, owner: str) -> Path:
        if space not in SPACES:
            raise ValueError(f"unknown storage space {space!r}")
        base = self.root if space == PUBLIC else self.root / f".{space}"
        return base / check_name(owner)

    def _file(self, space: str, owner: str, name: str) -> Path:
        return self._folder(space, owner) / check_name(name)

    def put(self, space: str, owner: str, name: str, data: bytes) -> None:
        write_atomic(self._file(space, owner, name), data)

    def put_file(self, space: str, owner: str, name: str, source: Path) -> None:
        target = self._file(space, owner, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(source, target)  # a rename on the same filesystem

    def writer(self, space: str, owner: str, name: str) -> BlobWriter:
        return _FileWriter(self._file(space, owner, name))

    def open(self, space: str, owner: str, name: str) -> BinaryIO:
        path = self._file(space, owner, name)
        if not path.is_file():
            raise FileNotFoundError(f"{space}/{owner}/{name}")
        return path.open("rb")

    def size(self, space: str, owner: str, name: str) -> int:
        path = self._file(space, owner, name)
        if not path.is_file():
            raise FileNotFoundError(f"{space}/{owner}/{name}")
        return path.stat().st_size

    def list(self, space: str, owner: str) -> list[Entry]:
        folder = self._folder(space, owner)
        if not folder.is_dir():
            return []
        return [Entry(p.name, p.stat().st_size) for p in sorted(folder.iterdir())
                if p.is_file() and not p.name.startswith(".")]

    def delete(self, space: str, owner: str, name: str | None = None) -> None:
        if name is None:
            shutil.rmtree(self._folder(space, owner), ignore_errors=True)
        else:
            self._file(space, owner, name).unlink(missing_ok=True)

    def sweep(self, space: str, keep: set[str], older_than_s: float) -> builtins.list[str]:
        base = self._folder(space, "x").parent
        cutoff = time.time() - older_than_s
        removed: list[str] = []
        for folder in sorted(base.iterdir()) if base.is_dir() else []:
            if folder.name.startswith(".") or not folder.is_dir():
                continue  # another space's folder, or not an owner's
            try:
                files = [p for p in folder.iterdir() if p.is_file()]
                times = [folder.stat().st_mtime, *(p.stat().st_mtime for p in files)]
                if folder.name not in keep and max(times) < cutoff:
                    shutil.rmtree(folder, ignore_errors=True)
                    removed.append(folder.name)
                    continue
                for p in files:
                    if p.name.startswith(PARTIAL_PREFIX) and p.stat().st_mtime < cutoff:
                        p.unlink(missing_ok=True)
            except FileNotFoundError:  # removed meanwhile by another process
                continue
        return removed


class _FileWriter(BlobWriter):
    def __init__(self, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=PARTIAL_PREFIX)
        self.target, self.tmp = target, Path(tmp)
        self.f: BinaryIO | None = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> None:
        assert self.f is not None, "written after commit or abort"
        self.f.write(data)

    def commit(self) -> None:
        assert self.f is not None, "committed twice or after abort"
        try:
            self.f.flush()
            os.fsync(self.f.fileno())
            self.f.close()
            self.f = None
            os.replace(self.tmp, self.target)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        if self.f is not None:
            self.f.close()
            self.f = None
        self.tmp.unlink(missing_ok=True)
