"""Uploaded files on a `Storage` (jobs.storage): space `uploads`, owner the upload id, one blob.

The API streams a file in (`writer`), checks it by reading it back (`open`: seekable) and
deletes it when refused; the worker opens the upload a job names. Neither sees a path. The
kind (.npz or .safetensors) lives in the upload's row, not in the blob's name.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from spartan_service.jobs.storage import UPLOADS, BlobWriter, FileStorage, Storage

log = logging.getLogger(__name__)
BLOB = "file"
_LEGACY = re.compile(r"^([A-Za-z0-9_-]{1,64})\.(safetensors|npz)$")


class UploadStore:
    def __init__(self, storage: Storage | Path) -> None:
        self.storage = storage if isinstance(storage, Storage) else FileStorage(Path(storage))

    def writer(self, upload_id: str) -> BlobWriter:
        return self.storage.writer(UPLOADS, upload_id, BLOB)

    def open(self, upload_id: str) -> BinaryIO:
        """FileNotFoundError when the upload's bytes are gone."""
        return self.storage.open(UPLOADS, upload_id, BLOB)

    def size(self, upload_id: str) -> int:
        return self.storage.size(UPLOADS, upload_id, BLOB)

    def exists(self, upload_id: str) -> bool:
        return self.storage.exists(UPLOADS, upload_id, BLOB)

    def delete(self, upload_id: str) -> None:
        self.storage.delete(UPLOADS, upload_id)

    def sweep(self, known_ids: set[str], older_than_s: float = 600.0) -> list[str]:
        """Remove what a crash left: partial files, and files no upload record names, once
        untouched for older_than_s (an upload in progress elsewhere writes all the while)."""
        return self.storage.sweep(UPLOADS, known_ids, older_than_s)

    def adopt(self, folder: Path, known_ids: set[str]) -> int:
        """Move the uploads of earlier versions (`folder/<id>.<kind>`, files the API wrote
        itself) into the store; files of unknown ids stay where they are."""
        moved = 0
        for path in sorted(folder.iterdir()) if folder.is_dir() else []:
            match = _LEGACY.match(path.name)
            if match and match.group(1) in known_ids and path.is_file():
                self.storage.put_file(UPLOADS, match.group(1), BLOB, path)
                moved += 1
        if moved:
            log.info("moved %d uploads of an earlier version into the upload store", moved)
        return moved


@dataclass(frozen=True)
class StoredUpload:
    """One upload a job uses, as the worker gets it: its kind, and its bytes to open."""

    store: UploadStore
    id: str
    kind: str

    def open(self) -> BinaryIO:
        try:
            return self.store.open(self.id)
        except FileNotFoundError:
            raise ValueError(f"the file of upload '{self.id}' is missing from the upload "
                             "store") from None

    def size(self) -> int:
        return self.store.size(self.id)
