"""The app against a real SQLite store and the embedded (filesystem) broker, in tmp_path."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from spartan_service.jobs.settings import Settings
from spartan_service.service.main import create_app

MakeClient = Callable[..., TestClient]


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    # Explicit None: a SPARTAN_* variable in the environment must not leak into a test.
    values: dict[str, Any] = {"data_dir": data_dir, "database_url": None, "broker_url": None,
                              "api_tokens": None}
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def make_client(tmp_path: Path) -> Iterator[MakeClient]:
    clients: list[TestClient] = []

    def make(**overrides: Any) -> TestClient:
        client = TestClient(create_app(make_settings(tmp_path, **overrides)))
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.app.state.resources.close()  # type: ignore[attr-defined]


@pytest.fixture
def client(make_client: MakeClient) -> TestClient:
    return make_client()

