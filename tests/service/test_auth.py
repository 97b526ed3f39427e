"""Bearer tokens and tenant isolation: what is not yours is 404 on every route."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from spartan_service.service.deps import tenant_for
from tests.service.conftest import MakeClient
from tests.service.factories import CONTRACT_SPEC, artifacts_of, safetensors_bytes

ALICE = {"Authorization": "Bearer token-alice"}
BOB = {"Authorization": "Bearer token-bob"}


@pytest.fixture
def secured(make_client: MakeClient) -> TestClient:
    return make_client(api_tokens="alice:token-alice,bob:token-bob")


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "token-alice"},
     {"Authorization": "Basic dG9rZW4tYWxpY2U="}, {"Authorization": "Bearer token-alice2"}],
)
def test_missing_or_wrong_token_is_401(secured: TestClient, headers: dict[str, str]) -> None:
    for method, path in [("GET", "/v1/jobs"), ("POST", "/v1/jobs"), ("GET", "/v1/uploads"),
                         ("GET", "/v1/cost-models"), ("GET", f"/v1/jobs/{'a' * 32}")]:
        response = secured.request(method, path, headers=headers, json=CONTRACT_SPEC)
        assert response.status_code == 401, (method, path)
        assert response.json() == {"detail": "missing or invalid bearer token"}
        assert response.headers["www-authenticate"] == "Bearer"


def test_probes_and_dashboard_need_no_token(secured: TestClient) -> None:
    assert secured.get("/healthz").status_code == 200
    assert secured.get("/readyz").status_code == 200
    assert secured.get("/").status_code == 200


def test_tenants_see_only_their_own(secured: TestClient) -> None:
    job = secured.post("/v1/jobs", json=CONTRACT_SPEC, headers=ALICE)
    assert job.status_code == 202
    job_id = job.json()["id"]
    artifacts_of(secured).write_bytes(job_id, "report.json", b"{}")
    upload = secured.post("/v1/uploads", headers=ALICE, files={
        "file": ("w.safetensors", safetensors_bytes({"w": np.ones(2, np.float32)}))})
    upload_id = upload.json()["id"]

    for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/artifacts",
                 f"/v1/jobs/{job_id}/artifacts/report.json", f"/v1/uploads/{upload_id}"):
        assert secured.get(path, headers=ALICE).status_code == 200, path
        response = secured.get(path, headers=BOB)
        assert response.status_code == 404, path
    assert secured.post(f"/v1/jobs/{job_id}/cancel", headers=BOB).status_code == 404
    assert secured.get(f"/v1/jobs/{job_id}", headers=ALICE).json()["status"] == "queued"
    assert secured.get("/v1/jobs", headers=BOB).json() == {"data": [], "count": 0}
    assert secured.get("/v1/uploads", headers=BOB).json()["count"] == 0
    assert secured.get("/v1/jobs", headers=ALICE).json()["count"] == 1

    # Bob cannot train from Alice's upload either.
    spec = {**CONTRACT_SPEC, "model": {"arch": "mlp", "weights": upload_id}}
    assert secured.post("/v1/jobs", json=spec, headers=BOB).status_code == 422
    assert secured.post("/v1/jobs", json=spec, headers=ALICE).status_code == 202


def test_without_tokens_everything_is_the_default_tenant(client: TestClient) -> None:
    job_id = client.post("/v1/jobs", json=CONTRACT_SPEC).json()["id"]
    # A token sent to an open service is ignored, not refused.
    got = client.get(f"/v1/jobs/{job_id}", headers={"Authorization": "Bearer anything"})
    assert got.status_code == 200


def test_tenant_for_matches_whole_tokens_only() -> None:
    tokens = {"token-alice": "alice", "token-bob": "bob"}
    assert tenant_for(tokens, "token-bob") == "bob"
    assert tenant_for(tokens, "token-") is None
    assert tenant_for(tokens, "token-alicex") is None
    assert tenant_for({}, "token-bob") is None


def test_bad_token_setting_is_refused(make_client: MakeClient) -> None:
    with pytest.raises(ValueError, match="tenant:token"):
        make_client(api_tokens="just-a-token")


def test_openapi_declares_bearer_auth_only_when_enforced(
    secured: TestClient, client: TestClient
) -> None:
    doc = secured.get("/openapi.json").json()
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert doc["paths"]["/v1/jobs"]["post"]["security"] == [{"bearerAuth": []}]
    assert "security" not in doc["paths"]["/healthz"]["get"]
    open_doc = client.get("/openapi.json").json()
    assert "securitySchemes" not in open_doc.get("components", {})
    assert "security" not in open_doc["paths"]["/v1/jobs"]["post"]
