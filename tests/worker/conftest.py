"""A job store, artifact store and settings under tmp_path, and a helper to submit jobs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from spartan_service.jobs.artifacts import ArtifactStore
from spartan_service.jobs.settings import Settings
from spartan_service.jobs.spec import JobSpec
from spartan_service.jobs.store import JobStore

Submit = Callable[..., str]

# 1 epoch of a small MLP on digits: 23 steps of 64 examples.
TINY: dict[str, Any] = {
    "model": {"arch": "mlp", "kwargs": {"hidden": [32]}},
    "data": {"dataset": "digits"},
    "sparsity": {"method": "spartan", "budget": 0.25},
    "training": {"epochs": 1, "lr": 0.01, "checkpoint_every": 5},
}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, database_url=None, broker_url=None, api_tokens=None,
                    progress_interval_s=0.05, heartbeat_timeout_s=60, max_attempts=3)


@pytest.fixture
def store(settings: Settings) -> Iterator[JobStore]:
    s = JobStore(settings.db_url)
    yield s
    s.close()


@pytest.fixture
def artifacts(settings: Settings) -> ArtifactStore:
    return ArtifactStore(settings.artifacts_dir)


def merged(base: dict[str, Any], **sections: dict[str, Any]) -> dict[str, Any]:
    out = {k: dict(v) for k, v in base.items()}
    for key, values in sections.items():
        out.setdefault(key, {}).update(values)
    return out


@pytest.fixture
def submit(store: JobStore) -> Submit:
    """Store a job as the API would (validated spec); raw=True stores it unvalidated."""

    def make(spec: dict[str, Any] | None = None, raw: bool = False, tenant: str = "t1",
             **sections: dict[str, Any]) -> str:
        body = merged(spec or TINY, **sections)
        if not raw:
            body = JobSpec.model_validate(body).model_dump(mode="json")
        return store.create_job(tenant, body, "cpu", "test").id

    return make
