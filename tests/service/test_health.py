"""Probes: /healthz is the process, /readyz the store and the broker."""

from __future__ import annotations

from fastapi.testclient import TestClient

from jobs.store import JobStore
from service.deps import get_store
from tests.service.conftest import MakeClient


def test_healthz_and_readyz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "checks": {}}
    assert client.get("/readyz").json() == {"status": "ready",
                                            "checks": {"store": "ok", "broker": "ok"}}


def test_readyz_is_503_when_the_broker_is_unreachable(make_client: MakeClient) -> None:
    client = make_client(broker_url="redis://127.0.0.1:1/0")
    response = client.get("/readyz")
    assert response.status_code == 503
    assert "broker unreachable" in response.json()["detail"]
    assert "store" not in response.json()["detail"]
    assert client.get("/healthz").status_code == 200


def test_readyz_is_503_when_the_store_is_unreachable(make_client: MakeClient) -> None:
    client = make_client(database_url="postgresql+psycopg://nobody@127.0.0.1:1/none")
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["detail"].startswith("not ready: job store unreachable")


def test_routes_answer_503_while_the_store_is_down(make_client: MakeClient) -> None:
    client = make_client(database_url="postgresql+psycopg://nobody@127.0.0.1:1/none")
    for method, path in [("GET", "/v1/jobs"), ("POST", "/v1/jobs"), ("GET", "/v1/uploads")]:
        response = client.request(method, path, json={})
        assert response.status_code == 503, path
        assert response.json() == {"detail": "the job store is unavailable"}
    assert client.get("/healthz").status_code == 200


def test_store_lost_mid_request_is_503(client: TestClient) -> None:
    lost = JobStore("postgresql+psycopg://nobody@127.0.0.1:1/none", create=False)
    client.app.dependency_overrides[get_store] = lambda: lost  # type: ignore[attr-defined]
    response = client.get("/v1/jobs")
    assert response.status_code == 503
    assert response.json() == {"detail": "the job store is unavailable"}
