"""A fresh SQLite job store in tmp_path for each test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from spartan_service.jobs.store import JobStore


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'jobs.db'}"


@pytest.fixture
def store(db_url: str) -> Iterator[JobStore]:
    s = JobStore(db_url)
    yield s
    s.close()
