"""The cost-model registry: versions per name, hardware and its filter, fitted models
registered as `spartan fit` writes them, the error on deployed models, refit, tenancy."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from spartan_service.costmodels import hardware
from spartan_service.costmodels.fit import fit_profile
from tests.service.conftest import MakeClient
from tests.service.factories import locs, profile, spec, store_of

ALICE = {"Authorization": "Bearer token-alice"}
BOB = {"Authorization": "Bearer token-bob"}
MACHINE = {"cpu": "AMD EPYC 7B13", "cpu_count": 2, "threads": 1, "torch": "2.13.0+cpu",
           "gpu": None, "batch": 64}


def with_machine(**machine: Any) -> dict[str, Any]:
    return {**profile(), "machine": {**MACHINE, **machine}}


def register(client: TestClient, body: dict[str, Any], **kw: Any) -> Any:
    response = client.post("/v1/cost-models", json=body, **kw)
    assert response.status_code == 201, response.text
    return response.json()


def test_versions_count_up_per_name(client: TestClient) -> None:
    first = register(client, {"name": "laptop", "profile": with_machine()})
    second = register(client, {"name": "laptop", "profile": with_machine()})
    other = register(client, {"name": "server", "profile": with_machine()})
    unnamed = register(client, {"profile": with_machine()})
    assert (first["version"], second["version"], other["version"]) == (1, 2, 1)
    assert unnamed["version"] == 1 and unnamed["name"] is None
    page = client.get("/v1/cost-models", params={"name": "laptop"}).json()
    assert page["count"] == 2 and [m["version"] for m in page["data"]] == [2, 1]


def test_hardware_recorded_and_filtered(client: TestClient) -> None:
    epyc = register(client, {"name": "a", "profile": with_machine()})
    xeon = register(client, {"name": "b", "profile": with_machine(cpu="Intel Xeon 8480")})
    bare = register(client, {"name": "c", "profile": profile()})
    hw = epyc["hardware"]
    assert hw["device"] == "cpu" and hw["cpu"] == "AMD EPYC 7B13" and hw["threads"] == 1
    assert hw["cores"] == 2 and hw["torch"] == "2.13.0" and hw["gpu"] is None
    assert epyc["fingerprint"] == hardware.fingerprint(hw) != xeon["fingerprint"]
    assert epyc["batch"] == 64 and epyc["source"] == "upload"
    assert bare["hardware"] is None and bare["fingerprint"] is None
    by_text = client.get("/v1/cost-models", params={"hardware": "xeon"}).json()
    assert [m["id"] for m in by_text["data"]] == [xeon["id"]]
    by_print = client.get("/v1/cost-models", params={"hardware": epyc["fingerprint"]}).json()
    assert [m["id"] for m in by_print["data"]] == [epyc["id"]]
    assert client.get("/v1/cost-models", params={"hardware": "%"}).json()["count"] == 0
    assert client.get("/v1/cost-models", params={"hardware": "h200"}).json()["count"] == 0


def test_fit_output_registers_as_it_is(client: TestClient) -> None:
    fitted = fit_profile(with_machine())
    body = register(client, {"name": "fitted", "cost_model": fitted})
    assert body["data"]["layers"] == fitted["layers"] and body["profile"] is None
    assert body["hardware"]["cpu"] == "AMD EPYC 7B13"
    bad = {**fitted, "layers": {"fc1": {**fitted["layers"]["fc1"], "slope": -1.0}}}
    response = client.post("/v1/cost-models", json={"cost_model": bad})
    assert response.status_code == 422
    assert locs(response)[0] == ["body", "cost_model", "layers", "fc1", "slope"]
    # Neither or both: one clear 422.
    for payload in ({"name": "x"}, {"profile": profile(), "cost_model": fitted}):
        response = client.post("/v1/cost-models", json=payload)
        assert response.status_code == 422 and locs(response)[0] == ["body", "profile"]


def point(job: str, measured: float, nnz: tuple[int, int]) -> dict[str, Any]:
    return {"job_id": job, "batch": 64, "measured": measured,
            "layers": [{"name": "fc1", "nnz_blocks": nnz[0], "measured": measured * 0.3},
                       {"name": "fc2", "nnz_blocks": nnz[1], "measured": measured * 0.5}]}


def add_points(client: TestClient, model: dict[str, Any], points: list[dict[str, Any]],
               tenant: str = "default") -> None:
    for p in points:
        store_of(client).add_deployment_point(model["id"], tenant, p["job_id"], p["batch"],
                                              0.0, p["measured"], p["layers"], None)


def test_deployment_error_and_refit(client: TestClient) -> None:
    model = register(client, {"name": "cpu", "profile": with_machine()})
    assert model["deployment"]["points"] == 0 and not model["deployment"]["needs_refit"]
    response = client.post(f"/v1/cost-models/{model['id']}/refit")
    assert response.status_code == 409 and "no deployment points" in response.json()["detail"]
    # Deployed models ran about twice as slow as predicted.
    predicted = 0.01 * 2 + 2e-5 * (500 + 1000)
    add_points(client, model, [point("j1", 2 * predicted, (500, 1000)),
                               point("j2", 2.1 * predicted, (500, 1000))])
    got = client.get(f"/v1/cost-models/{model['id']}").json()
    dep = got["deployment"]
    assert dep["points"] == 2 == dep["own_points"] and dep["needs_refit"]
    assert dep["mape"] == pytest.approx(0.52, abs=0.05)
    assert dep["refit_url"] == f"/v1/cost-models/{model['id']}/refit"
    assert "refit" in dep["message"]
    response = client.post(f"/v1/cost-models/{model['id']}/refit")
    assert response.status_code == 201, response.text
    new = response.json()
    assert new["name"] == "cpu" and new["version"] == 2 and new["source"] == "refit"
    assert new["parent_id"] == model["id"] and new["fingerprint"] == model["fingerprint"]
    assert new["refit"]["mape_after"] < new["refit"]["mape_before"]
    assert new["refit"]["mape_before"] == pytest.approx(dep["mape"])
    # Its error on the same stored points (its parent's) is lower, and under the threshold.
    assert new["deployment"]["points"] == 2 and new["deployment"]["own_points"] == 0
    assert new["deployment"]["mape"] < 0.15 and not new["deployment"]["needs_refit"]


def mlp_profile() -> dict[str, Any]:
    """A profile of the contract spec's model (the default MLP on digits)."""
    layers = []
    for name, shape in (("layers.0", [256, 64]), ("layers.1", [128, 256]), ("head", [10, 128])):
        total = shape[0] * shape[1]
        layers.append({"name": name, "shape": shape, "samples": [
            {"nnz_blocks": int(total * d), "latency": 0.01 + 2e-5 * total * d}
            for d in (0.1, 0.5, 1.0)]})
    return {"device": "cpu", "unit": "ms", "layers": layers, "machine": MACHINE}


def test_job_naming_a_cost_model(client: TestClient) -> None:
    register(client, {"name": "cpu", "profile": mlp_profile()})
    fitted = {"kind": "fitted", "name": "cpu", "budget_ms": 0.5, "strict_hardware": True}
    response = client.post("/v1/jobs", json=spec(cost_model=fitted))
    assert response.status_code == 202, response.text
    # Every version of the name is for another model: refused, naming the name.
    register(client, {"name": "other", "profile": with_machine()})
    response = client.post("/v1/jobs", json=spec(cost_model={"kind": "fitted", "name": "other",
                                                             "budget_ms": 0.5}))
    assert response.status_code == 422 and ["body", "cost_model", "name"] in locs(response)
    missing = client.post("/v1/jobs", json=spec(cost_model={"kind": "fitted", "name": "nope"}))
    assert missing.status_code == 422 and ["body", "cost_model", "name"] in locs(missing)
    for bad in ({"kind": "fitted"}, {"kind": "fitted", "name": "cpu", "id": "x" * 32},
                {"kind": "params", "name": "cpu"},
                {"kind": "params", "strict_hardware": True}):
        response = client.post("/v1/jobs", json=spec(cost_model=bad))
        assert response.status_code == 422, bad
        assert locs(response)[0][:2] == ["body", "cost_model"]


def test_tenancy_on_registry_routes(make_client: MakeClient) -> None:
    client = make_client(api_tokens="alice:token-alice,bob:token-bob")
    model = register(client, {"name": "shared-name", "profile": with_machine()}, headers=ALICE)
    add_points(client, model, [point("j1", 1.0, (500, 1000))], tenant="alice")
    for method, path in [("GET", f"/v1/cost-models/{model['id']}"),
                         ("POST", f"/v1/cost-models/{model['id']}/refit")]:
        assert client.request(method, path, headers=BOB).status_code == 404
        assert client.request(method, path).status_code == 401
    assert client.get("/v1/cost-models", headers=BOB,
                      params={"name": "shared-name"}).json()["count"] == 0
    # Bob's own "shared-name" starts at version 1; his jobs cannot name Alice's.
    bobs = register(client, {"name": "shared-name", "profile": with_machine()}, headers=BOB)
    assert bobs["version"] == 1
    refit = client.post(f"/v1/cost-models/{bobs['id']}/refit", headers=BOB)
    assert refit.status_code == 409  # Alice's points are not Bob's
    job = client.post("/v1/jobs", headers=BOB, json=spec(
        cost_model={"kind": "fitted", "name": "only-alice"}))
    assert job.status_code == 422
