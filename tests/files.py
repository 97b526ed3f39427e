"""Where the filesystem storage backend keeps a job's files: tests look at them directly (the
service's code never does; it goes through spartan_service.jobs.storage)."""

from __future__ import annotations

from pathlib import Path

from spartan_service.jobs.artifacts import ArtifactStore
from spartan_service.jobs.storage import PRIVATE, FileStorage


def artifacts_root(artifacts: ArtifactStore) -> Path:
    assert isinstance(artifacts.storage, FileStorage)
    return artifacts.storage.root


def artifact_file(artifacts: ArtifactStore, job_id: str, name: str | None = None) -> Path:
    """A public artifact's file (or the job's folder, without a name)."""
    folder = artifacts_root(artifacts) / job_id
    return folder if name is None else folder / name


def private_file(artifacts: ArtifactStore, job_id: str, name: str) -> Path:
    return artifacts_root(artifacts) / f".{PRIVATE}" / job_id / name
