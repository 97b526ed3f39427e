"""On PostgreSQL (which refuses NUL in text and NaN in JSON with errors, not empty results):
what cannot be stored is a 422 at the door or a 404 for ids, never a 500; a record holding text
that is not valid Unicode is listed with its problem and deleted."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from spartan_service.jobs.settings import Settings
from spartan_service.service.main import create_app
from tests.e2e.test_distributed import real_backends
from tests.service.factories import CONTRACT_SPEC, locs

pytestmark = pytest.mark.distributed


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with real_backends() as (broker_url, database_url):
        app = create_app(Settings(data_dir=tmp_path, database_url=database_url,
                                  broker_url=broker_url, api_tokens=None))
        try:
            with TestClient(app) as test_client:
                yield test_client
        finally:
            app.state.resources.close()


def test_postgres_never_answers_500_for_unstorable_input(client: TestClient) -> None:
    base = json.dumps(CONTRACT_SPEC)[:-1]
    for extra, loc in [('"name": "x\\u0000"', ["body", "name"]),
                       ('"tags": ["\\ud800"]', ["body", "tags", 0]),
                       ('"training": {"lr": NaN}', ["body", "training", "lr"])]:
        body = base.replace('"training": {"epochs": 2}', '"training": {}') + ", " + extra + "}"
        response = client.post("/v1/jobs", content=body.encode(),
                               headers={"content-type": "application/json"})
        assert response.status_code == 422, response.text
        assert loc in locs(response)
    for path in ("/v1/jobs/a%00b", "/v1/uploads/a%00b", "/v1/cost-models/a%00b"):
        assert client.get(path).status_code == 404, path
    assert client.delete("/v1/jobs/a%00b").status_code == 404

    store = client.app.state.resources.store  # type: ignore[attr-defined]
    bad = store.create_job("default", {**CONTRACT_SPEC, "tags": ["\ud800"]}, "cpu", "bad")
    store.finish_job(bad.id, "failed", error="oops")
    listing = client.get("/v1/jobs")
    assert listing.status_code == 200, listing.text
    row = listing.json()["data"][0]
    assert row["spec"]["tags"] == ["\\ud800"]
    assert "cannot be shown as stored" in row["warnings"][-1]
    assert client.delete(f"/v1/jobs/{bad.id}").status_code == 204
    assert client.get("/v1/jobs").json()["count"] == 0
