"""The artifact store: one directory per job under the data dir (or a shared volume)."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


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


def check_name(name: str) -> str:
    if not _NAME.match(name) or ".." in name:
        raise ValueError(f"invalid artifact name {name!r}")
    return name


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def job_dir(self, job_id: str) -> Path:
        return self.root / check_name(job_id)

    def path(self, job_id: str, name: str) -> Path:
        return self.job_dir(job_id) / check_name(name)

    def write_bytes(self, job_id: str, name: str, data: bytes) -> Path:
        target = self.path(job_id, name)
        write_atomic(target, data)
        return target

    def exists(self, job_id: str, name: str) -> bool:
        return self.path(job_id, name).is_file()

    def read_bytes(self, job_id: str, name: str) -> bytes:
        return self.path(job_id, name).read_bytes()

    def list(self, job_id: str) -> list[dict[str, int | str]]:
        folder = self.job_dir(job_id)
        if not folder.is_dir():
            return []
        return [
            {"name": p.name, "size": p.stat().st_size}
            for p in sorted(folder.iterdir())
            if p.is_file() and not p.name.startswith(".")
        ]

    def iter_file(self, job_id: str, name: str, chunk: int = 1 << 20) -> Iterator[bytes]:
        with self.path(job_id, name).open("rb") as f:
            while block := f.read(chunk):
                yield block

    def remove(self, job_id: str) -> None:
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)
