"""Submit-time refusals for cost models: each a 422 naming its field, before anything runs."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.service.factories import locs, model_profile, spec


def _cost_model(client: TestClient, profile: dict[str, Any]) -> str:
    response = client.post("/v1/cost-models", json={"name": "m", "profile": profile})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _submit(client: TestClient, cm: str, **extra: Any) -> Any:
    sparsity = {"method": "spartan", "budget": extra.pop("budget", 0.5),
                **extra.pop("sparsity", {})}
    cost = {"kind": "fitted", "id": cm, **extra.pop("cost_model", {})}
    return client.post("/v1/jobs", json=spec(sparsity=sparsity, cost_model=cost, **extra))


def _refused(response: Any, loc: list[Any], text: str) -> None:
    assert response.status_code == 422, response.text
    assert locs(response) == [loc]
    assert text in response.json()["detail"][0]["msg"]


def test_matching_cost_models_are_accepted(client: TestClient) -> None:
    weights = _cost_model(client, model_profile())
    assert _submit(client, weights).status_code == 202
    channels = _cost_model(client, model_profile(structure="channels"))
    response = _submit(client, channels, sparsity={"structure": "channels", "min_keep": 0.1})
    assert response.status_code == 202, response.text
    assert response.json()["spec"]["sparsity"]["structure"] == "channels"


def test_budget_at_or_below_the_fixed_cost(client: TestClient) -> None:
    cm = _cost_model(client, model_profile(intercept=0.01, overhead=0.02))  # fixed 0.05 ms
    _refused(_submit(client, cm, cost_model={"budget_ms": 0.05}),
             ["body", "cost_model", "budget_ms"], "not above this cost model's fixed cost")
    _refused(_submit(client, cm, budget=0.01), ["body", "sparsity", "budget"],
             "not above this cost model's fixed cost")
    _refused(_submit(client, cm, cost_model={"budget_ms": 1e3}),
             ["body", "cost_model", "budget_ms"], "above the dense model's predicted")


def test_cost_model_for_another_model_or_shape(client: TestClient) -> None:
    cnn = _cost_model(client, model_profile(arch="cnn"))
    _refused(_submit(client, cnn), ["body", "cost_model", "id"], "for another model")
    prof = model_profile()
    prof["layers"][0]["shape"] = [prof["layers"][0]["shape"][0] * 2, prof["layers"][0]["shape"][1]]
    other = _cost_model(client, prof)
    _refused(_submit(client, other), ["body", "cost_model", "id"], "other shapes")


def test_structure_must_match(client: TestClient) -> None:
    weights = _cost_model(client, model_profile())
    _refused(_submit(client, weights, sparsity={"structure": "channels"}),
             ["body", "cost_model", "id"], "fitted for weight sparsity")
    channels = _cost_model(client, model_profile(structure="channels"))
    _refused(_submit(client, channels), ["body", "cost_model", "id"],
             "fitted for channel sparsity")


def test_a_cost_model_with_no_usable_budget(client: TestClient) -> None:
    prof = model_profile()
    for lay in prof["layers"]:  # dense kernels everywhere: flat latency
        for s in lay["samples"]:
            s["latency"] = 0.05
    cm = _cost_model(client, prof)
    _refused(_submit(client, cm), ["body", "cost_model", "id"], "no budget is usable")


@pytest.mark.parametrize("sparsity,field", [
    ({"structure": "channels", "allocation": "erk"}, "sparsity"),
    ({"structure": "channels", "block": [4, 4]}, "sparsity"),
    ({"structure": "channels", "min_keep": 1.5}, "min_keep"),
    ({"structure": "blocks"}, "structure"),
])
def test_structure_fields_checked(client: TestClient, sparsity: dict[str, Any],
                                  field: str) -> None:
    response = client.post("/v1/jobs", json=spec(sparsity={"budget": 0.5, **sparsity}))
    assert response.status_code == 422
    assert field in [str(p) for p in locs(response)[0]]


def test_poor_fits_become_job_warnings(client: TestClient) -> None:
    prof = model_profile()
    lay = prof["layers"][0]
    for i, s in enumerate(lay["samples"]):  # a noisy layer: held-out error far over 20%
        s["latency"] *= (1, 3, 0.3, 2)[i]
    cm = client.post("/v1/cost-models", json={"name": "noisy", "profile": prof}).json()
    assert any("held-out error" in w for w in cm["data"].get("warnings", []))
    job = _submit(client, cm["id"])
    assert job.status_code == 202, job.text
    assert any("cost model: layer layers.0" in w for w in job.json()["warnings"])
