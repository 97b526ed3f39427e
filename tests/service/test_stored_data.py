"""Everything stored can be served: text that is not valid Unicode, NUL, non-finite and
out-of-range numbers are refused at the door (422 naming the field); sizes are bounded; a
record that is somehow unserialisable is shown with its problem and can be deleted."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from spartan_service.jobs.models import Job
from tests.service.conftest import MakeClient
from tests.service.factories import CONTRACT_SPEC, artifacts_of, locs, profile, spec, store_of

BASE = json.dumps(CONTRACT_SPEC)[:-1]  # the contract spec, open for one more field


def raw_post(client: TestClient, path: str, text: str) -> Any:
    return client.post(path, content=text.encode(), headers={"content-type": "application/json"})


@pytest.mark.parametrize(("extra", "loc"), [
    ('"name": "a\\ud800b"', ["body", "name"]),
    ('"tags": ["ok", "\\udfff"]', ["body", "tags", 1]),
    ('"tags": ["nul\\u0000"]', ["body", "tags", 0]),
    ('"name": "x\\u0000"', ["body", "name"]),
    ('"cost_model": {"kind": "fitted", "id": "\\ud800"}', ["body", "cost_model", "id"]),
])
def test_text_that_cannot_be_stored_and_served_is_422(
    client: TestClient, extra: str, loc: list[Any]
) -> None:
    response = raw_post(client, "/v1/jobs", BASE + ", " + extra + "}")
    assert response.status_code == 422, response.text
    assert loc in locs(response)
    assert client.get("/v1/jobs").json()["count"] == 0


@pytest.mark.parametrize(("section", "loc"), [
    ('"sparsity": {"budget": NaN}', ["body", "sparsity", "budget"]),
    ('"sparsity": {"budget": 0.1, "beta_final": Infinity}', ["body", "sparsity", "beta_final"]),
    ('"training": {"lr": 1e400}', ["body", "training", "lr"]),
    ('"training": {"weight_decay": -Infinity}', ["body", "training", "weight_decay"]),
    ('"training": {"seed": 1000000000000000000000000000000}', ["body", "training", "seed"]),
    ('"model": {"arch": "mlp", "kwargs": {"dropout": NaN}}', ["body", "model", "kwargs"]),
    ('"model": {"arch": "mlp", "kwargs": {"hidden": [100000000000000000000000]}}',
     ["body", "model", "kwargs"]),
    ('"data": {"dataset": "digits", "kwargs": {"\\ud800": 1}}', ["body", "data", "kwargs"]),
])
def test_non_finite_and_out_of_range_numbers_are_422(
    client: TestClient, section: str, loc: list[Any]
) -> None:
    body = json.loads(BASE + "}")
    key = section.split(":", 1)[0].strip('"')
    body.pop(key, None)
    text = json.dumps(body)[:-1] + ", " + section + "}"
    response = raw_post(client, "/v1/jobs", text)
    assert response.status_code == 422, response.text
    assert loc == locs(response)[0][: len(loc)]


def test_cost_model_profile_text_and_numbers_are_checked(client: TestClient) -> None:
    good = json.dumps({"name": "m", "profile": profile()})
    bad_device = good.replace('"device": "cpu"', '"device": "cpu\\ud800"')
    response = raw_post(client, "/v1/cost-models", bad_device)
    assert response.status_code == 422 and locs(response)[0][:2] == ["body", "profile"]
    nan_latency = good.replace('"latency": ', '"latency": NaN, "x": ', 1)
    response = raw_post(client, "/v1/cost-models", nan_latency)
    assert response.status_code == 422
    response = raw_post(client, "/v1/cost-models", good.replace('"m"', '"m\\u0000"'))
    assert response.status_code == 422 and locs(response) == [["body", "name"]]


def test_sizes_are_bounded(client: TestClient) -> None:
    too_many = client.post("/v1/jobs", json=spec(sparsity={"prefixes": ["a"] * 300}))
    assert too_many.status_code == 422 and locs(too_many)[0] == ["body", "sparsity", "prefixes"]
    long_tag = client.post("/v1/jobs", json=spec(tags=["t" * 65]))
    assert long_tag.status_code == 422 and locs(long_tag) == [["body", "tags", 0]]
    job = store_of(client).create_job("default", CONTRACT_SPEC, "cpu", None,
                                      [f"warning {i} " + "w" * 2000 for i in range(150)])
    warnings = client.get(f"/v1/jobs/{job.id}").json()["warnings"]
    assert len(warnings) == 20 and all(len(w) <= 500 for w in warnings)
    assert warnings[-1] == "... and 131 more warnings, not shown"


def test_unserialisable_record_is_listed_with_its_problem_and_deletable(
    client: TestClient,
) -> None:
    store = store_of(client)
    good = client.post("/v1/jobs", json=spec()).json()
    # As a record stored before the checks at the door would be.
    # (JSON columns store a lone surrogate escaped; reading it back gives it again.)
    bad = store.create_job("default", {**CONTRACT_SPEC, "tags": ["\ud800"]}, "cpu", "bad",
                           ["odd \udc80 warning"])
    with store.session() as session:
        session.get(Job, bad.id).progress = {"step": 1, "loss": float("nan")}
    listing = client.get("/v1/jobs")
    assert listing.status_code == 200
    rows = {row["id"]: row for row in listing.json()["data"]}
    assert set(rows) == {good["id"], bad.id}
    assert rows[bad.id]["spec"]["tags"] == ["\\ud800"]
    assert rows[bad.id]["progress"]["loss"] is None
    assert "cannot be shown as stored" in rows[bad.id]["warnings"][-1]
    assert client.get(f"/v1/jobs/{bad.id}").status_code == 200

    assert client.delete(f"/v1/jobs/{bad.id}").status_code == 409  # still queued
    store.finish_job(bad.id, "failed", error="oops")
    artifacts_of(client).write_bytes(bad.id, "report.json", b"{}")
    assert client.delete(f"/v1/jobs/{bad.id}").status_code == 204
    assert artifacts_of(client).list(bad.id) == []
    assert client.get(f"/v1/jobs/{bad.id}").status_code == 404
    assert client.delete(f"/v1/jobs/{bad.id}").status_code == 404
    assert client.get("/v1/jobs").json()["count"] == 1


def test_jobs_are_deleted_only_by_their_tenant(make_client: MakeClient) -> None:
    client = make_client(api_tokens="a:token-of-tenant-a,b:token-of-tenant-b")
    as_a = {"Authorization": "Bearer token-of-tenant-a"}
    as_b = {"Authorization": "Bearer token-of-tenant-b"}
    job = client.post("/v1/jobs", json=spec(), headers=as_a).json()
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=as_a).status_code == 202
    assert client.delete(f"/v1/jobs/{job['id']}", headers=as_b).status_code == 404
    assert client.delete(f"/v1/jobs/{job['id']}", headers=as_a).status_code == 204
