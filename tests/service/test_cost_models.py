"""Cost models: fit from a profile (JSON body), get, list, and 422s naming layer and field."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.service.factories import locs, model_profile, profile, spec


def create(client: TestClient, body: dict[str, Any]) -> Any:
    return client.post("/v1/cost-models", json=body)


def test_fit_get_and_list(client: TestClient) -> None:
    response = create(client, {"name": "cpu-mlp", "profile": profile(layers=2)})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["name"] == "cpu-mlp"
    assert body["data"]["unit"] == "ms" and body["data"]["device"] == "cpu"
    fc1 = body["data"]["layers"]["fc1"]
    # The profile's latency is 0.01 + 2e-5 x nnz (1% noise): the fit finds it.
    assert fc1["slope"] == pytest.approx(2e-5, rel=0.05)
    assert fc1["intercept"] == pytest.approx(0.01, abs=0.01)
    assert fc1["r2"] > 0.99 and 0 <= fc1["mape"] < 0.05
    assert fc1["block"] == [1, 1]
    assert body["profile"]["layers"][0]["name"] == "fc1"
    assert client.get(f"/v1/cost-models/{body['id']}").json() == body
    page = client.get("/v1/cost-models").json()
    assert page["count"] == 1 and page["data"][0]["id"] == body["id"]
    assert "profile" not in page["data"][0]


def test_profile_in_microseconds_is_stored_in_ms(client: TestClient) -> None:
    prof = profile(layers=1)
    prof["unit"] = "us"
    body = create(client, {"profile": prof}).json()
    assert body["data"]["unit"] == "ms"
    assert body["data"]["layers"]["fc1"]["slope"] == pytest.approx(2e-8, rel=0.05)
    assert body["profile"]["unit"] == "ms"


def _bad(mutate: Any) -> dict[str, Any]:
    prof = profile(layers=2)
    mutate(prof)
    return prof


@pytest.mark.parametrize(
    ("prof", "layer", "field"),
    [
        (_bad(lambda p: p["layers"][1]["samples"][2].update(latency=-1.0)), "fc2",
         "samples[2].latency"),
        (_bad(lambda p: p["layers"][0].update(shape=[64])), "fc1", "shape"),
        (_bad(lambda p: p["layers"][0].update(samples=p["layers"][0]["samples"][:2])), "fc1",
         "samples"),
        (_bad(lambda p: p["layers"][1]["samples"][0].update(nnz_blocks=10**9)), "fc2",
         "samples[0].nnz_blocks"),
    ],
)
def test_bad_profile_is_422_naming_layer_and_field(
    client: TestClient, prof: dict[str, Any], layer: str, field: str
) -> None:
    response = create(client, {"profile": prof})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail[0]["loc"] == ["body", "profile", "layers", layer, field]
    assert layer in detail[0]["msg"] and field in detail[0]["msg"]
    assert client.get("/v1/cost-models").json()["count"] == 0


def test_profile_without_layers_is_422(client: TestClient) -> None:
    response = create(client, {"profile": {"device": "cpu", "unit": "ms"}})
    assert response.status_code == 422
    assert locs(response)[0][:2] == ["body", "profile"]
    assert "layers" in response.json()["detail"][0]["msg"]


@pytest.mark.parametrize(
    ("body", "loc"),
    [({}, ["body", "profile"]), ({"profile": [], "name": "x"}, ["body", "profile"]),
     ({"profile": {}, "colour": 1}, ["body", "colour"])],
)
def test_bad_body_is_422(client: TestClient, body: dict[str, Any], loc: list[str]) -> None:
    response = create(client, body)
    assert response.status_code == 422
    assert loc in locs(response)


def test_unknown_cost_model_is_404(client: TestClient) -> None:
    response = client.get(f"/v1/cost-models/{'c' * 32}")
    assert response.status_code == 404
    assert response.json() == {"detail": "cost model not found"}


def test_job_with_a_fitted_cost_model(client: TestClient) -> None:
    model_id = create(client, {"profile": model_profile()}).json()["id"]
    body = spec(cost_model={"kind": "fitted", "id": model_id, "budget_ms": 0.5})
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    assert response.json()["spec"]["cost_model"]["id"] == model_id
