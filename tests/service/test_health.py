"""Probes: /healthz is the process, /readyz the store and the broker."""

from __future__ import annotations

import shutil
from pathlib import Path

from fastapi.testclient import TestClient

from spartan_service.jobs.store import JobStore
from spartan_service.service.deps import get_store
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


def test_readyz_is_503_when_the_queue_folder_is_gone(client: TestClient, tmp_path: Path) -> None:
    assert client.get("/readyz").status_code == 200
    shutil.rmtree(tmp_path / "broker")
    response = client.get("/readyz")
    assert response.status_code == 503
    assert "broker unreachable" in response.json()["detail"]


def test_api_responses_carry_security_headers(client: TestClient) -> None:
    for response in (client.get("/healthz"), client.get("/v1/jobs"),
                     client.get("/v1/jobs/nope"), client.post("/v1/jobs", json={"x": 1})):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert "default-src 'none'" in response.headers["content-security-policy"]
    page = client.get("/")  # the dashboard keeps its own policy
    assert "script-src 'self'" in page.headers["content-security-policy"]


def test_docs_are_served_by_the_app(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200 and "/docs/swagger-ui-bundle.js" in page.text
    assert "http" not in page.text.replace("http-equiv", "")  # nothing from elsewhere
    assert "script-src 'self'" in page.headers["content-security-policy"]
    bundle = client.get("/docs/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and b"SwaggerUIBundle" in bundle.content
    assert client.get("/docs/index.html").status_code == 404
    assert client.get("/redoc").status_code == 404
