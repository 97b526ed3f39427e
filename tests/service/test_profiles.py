"""Profile jobs over REST: submit (202, queued on the right queue), list, get, cancel,
validation (422 naming the field) and tenancy."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.service.conftest import MakeClient
from tests.service.factories import artifacts_of, locs, store_of

BODY: dict[str, Any] = {"name": "cpu-mlp", "model": {"arch": "mlp"},
                        "data": {"dataset": "digits"}, "quick": True}
ALICE = {"Authorization": "Bearer token-alice"}
BOB = {"Authorization": "Bearer token-bob"}


def test_submit_list_get_cancel(client: TestClient) -> None:
    response = client.post("/v1/profiles", json=BODY)
    assert response.status_code == 202, response.text
    body = response.json()
    assert response.headers["location"] == f"/v1/profiles/{body['id']}"
    assert body["status"] == "queued" and body["queue"] == "cpu"
    assert body["cost_model_id"] is None and body["cost_models"] == []
    assert body["spec"]["structure"] == "weights" and body["spec"]["batch_sizes"] == [64]
    assert body["spec"]["kernels"] == ["auto"] and body["spec"]["block"] == [1, 1]
    got = client.get(f"/v1/profiles/{body['id']}").json()
    assert got["id"] == body["id"] and got["profile"] is None and got["profiles"] == []
    page = client.get("/v1/profiles").json()
    assert page["count"] == 1 and page["data"][0]["id"] == body["id"]
    # A profile is a job of its own kind: not listed or served among training jobs.
    assert client.get("/v1/jobs").json()["count"] == 0
    assert client.get(f"/v1/jobs/{body['id']}").status_code == 404
    cancelled = client.post(f"/v1/profiles/{body['id']}/cancel")
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"


def test_gpu_profile_goes_to_the_gpu_queue(client: TestClient) -> None:
    body = client.post("/v1/profiles", json={**BODY, "device": "cuda"}).json()
    assert body["queue"] == "gpu"


def test_pagination_and_status_filter(client: TestClient) -> None:
    ids = [client.post("/v1/profiles", json={**BODY, "name": f"p{i}"}).json()["id"]
           for i in range(3)]
    page = client.get("/v1/profiles", params={"limit": 2, "offset": 0}).json()
    assert page["count"] == 3 and len(page["data"]) == 2
    rest = client.get("/v1/profiles", params={"limit": 2, "offset": 2}).json()
    assert {p["id"] for p in page["data"] + rest["data"]} == set(ids)
    client.post(f"/v1/profiles/{ids[0]}/cancel")
    assert client.get("/v1/profiles", params={"status": "cancelled"}).json()["count"] == 1
    assert client.get("/v1/profiles", params={"status": "nope"}).status_code == 422


@pytest.mark.parametrize(("body", "loc"), [
    ({"model": {"arch": "mpl"}}, ["body", "model", "arch"]),
    ({"structure": "rows"}, ["body", "structure"]),
    ({"block": [3, 3]}, ["body", "block"]),
    ({"kernels": ["fast"]}, ["body", "kernels"]),
    ({"kernels": ["auto", "csr"]}, ["body", "kernels"]),
    ({"kernels": []}, ["body", "kernels"]),
    ({"densities": [0.1, 0.5, 1.5]}, ["body", "densities"]),
    ({"densities": [0.5, 0.5, 0.5]}, ["body", "densities"]),
    ({"batch_sizes": [0]}, ["body", "batch_sizes"]),
    ({"batch_sizes": []}, ["body", "batch_sizes"]),
    ({"quick": "maybe"}, ["body", "quick"]),
    ({"queue": "tpu"}, ["body", "queue"]),
    ({"colour": "red"}, ["body", "colour"]),
    ({"widths": [0.25, 0.5, 1.0]}, ["body"]),
    ({"name": "a\x00b"}, ["body", "name"]),
    ({"model": {"arch": "mlp", "weights": "0" * 32}}, ["body", "model", "weights"]),
    ({"data": {"dataset": "upload", "upload": "0" * 32}}, ["body", "data", "upload"]),
    ({"task": "causal_lm"}, ["body"]),  # a task the model cannot do, as for a job
    ({"task": "ranking"}, ["body", "task"]),
])
def test_bad_profile_request_is_422_naming_the_field(client: TestClient, body: dict[str, Any],
                                                     loc: list[str]) -> None:
    response = client.post("/v1/profiles", json={**BODY, **body})
    assert response.status_code == 422, response.text
    assert loc in locs(response)
    assert client.get("/v1/profiles").json()["count"] == 0


def test_unknown_profile_is_404(client: TestClient) -> None:
    for method, path in [("GET", f"/v1/profiles/{'a' * 32}"),
                         ("POST", f"/v1/profiles/{'a' * 32}/cancel")]:
        response = client.request(method, path)
        assert response.status_code == 404
        assert response.json() == {"detail": "profile not found"}


def test_a_training_job_is_not_a_profile(client: TestClient) -> None:
    job = client.post("/v1/jobs", json={"model": {"arch": "mlp"}}).json()
    client.post(f"/v1/jobs/{job['id']}/cancel")  # finished: only its kind keeps it here
    for method, path in [("GET", ""), ("POST", "/cancel"), ("GET", "/logs"), ("DELETE", "")]:
        response = client.request(method, f"/v1/profiles/{job['id']}{path}")
        assert response.status_code == 404, (method, path)
        assert response.json() == {"detail": "profile not found"}
    assert client.get(f"/v1/jobs/{job['id']}").status_code == 200  # still there


def test_a_profile_is_not_a_training_job(client: TestClient) -> None:
    """Every route under /v1/jobs answers 404 for a profile, finished or not; its own routes
    serve its log and delete it."""
    profile = client.post("/v1/profiles", json=BODY).json()["id"]
    store, artifacts = store_of(client), artifacts_of(client)
    artifacts.write_bytes(profile, "profile-b64.json", b"{}")
    store.finish_job(profile, "succeeded")
    for method, path in [("GET", ""), ("POST", "/cancel"), ("DELETE", ""), ("GET", "/logs"),
                         ("GET", "/metrics"), ("GET", "/artifacts"),
                         ("GET", "/artifacts/profile-b64.json")]:
        response = client.request(method, f"/v1/jobs/{profile}{path}")
        assert response.status_code == 404, (method, path)
        assert response.json() == {"detail": "job not found"}, (method, path)
    assert store.get_job(profile) is not None  # DELETE /v1/jobs left it alone
    logs = client.get(f"/v1/profiles/{profile}/logs")
    assert logs.status_code == 200 and logs.json()["count"] == 0
    assert client.delete(f"/v1/profiles/{profile}").status_code == 204
    assert client.get(f"/v1/profiles/{profile}").status_code == 404
    assert store.get_job(profile) is None and not artifacts.exists(profile, "profile-b64.json")


def test_a_running_profile_cannot_be_deleted(client: TestClient) -> None:
    profile = client.post("/v1/profiles", json=BODY).json()["id"]
    response = client.delete(f"/v1/profiles/{profile}")
    assert response.status_code == 409
    assert response.json() == {"detail": "profile is queued: cancel it before deleting it"}
    assert client.get(f"/v1/profiles/{profile}").status_code == 200


def test_tenants_see_only_their_own_profiles(make_client: MakeClient) -> None:
    client = make_client(api_tokens="alice:token-alice,bob:token-bob")
    assert client.post("/v1/profiles", json=BODY).status_code == 401
    assert client.get("/v1/profiles").status_code == 401
    mine = client.post("/v1/profiles", json=BODY, headers=ALICE).json()["id"]
    assert client.get("/v1/profiles", headers=BOB).json() == {"data": [], "count": 0}
    assert client.get(f"/v1/profiles/{mine}", headers=BOB).status_code == 404
    assert client.post(f"/v1/profiles/{mine}/cancel", headers=BOB).status_code == 404
    assert client.get(f"/v1/profiles/{mine}/logs", headers=BOB).status_code == 404
    assert client.delete(f"/v1/profiles/{mine}", headers=BOB).status_code == 404
    assert client.get(f"/v1/profiles/{mine}", headers=ALICE).status_code == 200
    job = store_of(client).get_job(mine)
    assert job.tenant == "alice" and job.status == "queued"
