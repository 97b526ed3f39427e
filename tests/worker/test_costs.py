"""Jobs under FLOPs and fitted latency cost models: the budget is met in the model's unit."""

from __future__ import annotations

import json
from typing import Any

import pytest

from spartan_service.jobs.artifacts import ArtifactStore
from spartan_service.jobs.settings import Settings
from spartan_service.jobs.store import JobStore
from spartan_service.worker.runner import run_job
from tests.worker.conftest import Submit

# For the TINY MLP (64 -> 32 -> 10): dense latency 0.01 + 0.015 + 2048e-4 + 320 * 2e-4 ms.
LATENCY = {"unit": "ms", "device": "cpu", "overhead": 0.01, "layers": {
    "layers.0": {"intercept": 0.01, "slope": 1e-4, "block": [1, 1], "r2": 1.0, "mape": 0.0},
    "head": {"intercept": 0.005, "slope": 2e-4, "block": [1, 1], "r2": 1.0, "mape": 0.0},
}}
DENSE_MS = 0.01 + 0.015 + 2048e-4 + 320 * 2e-4


def run(submit: Submit, store: JobStore, artifacts: ArtifactStore, settings: Settings,
        **sections: Any) -> dict[str, Any]:
    job_id = submit(**sections)
    run_job(job_id, store, artifacts, settings)
    job = store.get_job(job_id)
    assert job is not None and job.status == "succeeded", job.error if job else None
    cost: dict[str, Any] = json.loads(artifacts.read_bytes(job_id, "report.json"))["cost"]
    assert cost["within_budget"] and cost["predicted"] <= cost["budget"] * (1 + 1e-4)
    return cost


def test_flops_budget(submit: Submit, store: JobStore, artifacts: ArtifactStore,
                      settings: Settings) -> None:
    cost = run(submit, store, artifacts, settings, sparsity={"budget": 0.3},
               cost_model={"kind": "flops"})
    dense = 2 * (64 * 32 + 32 * 10)  # one multiply and one add per weight
    assert cost["unit"] == "flops" and cost["dense"] == pytest.approx(dense)
    assert cost["budget"] == pytest.approx(0.3 * dense)
    assert cost["predicted"] == pytest.approx(0.3 * dense, rel=0.01)


@pytest.mark.parametrize(("cost_model", "budget"), [
    ({"budget_ms": 0.1}, 0.1),
    ({}, 0.5 * DENSE_MS),  # sparsity.budget 0.5: half the dense latency, intercepts included
])
def test_fitted_latency_budget(submit: Submit, store: JobStore, artifacts: ArtifactStore,
                               settings: Settings, cost_model: dict[str, Any],
                               budget: float) -> None:
    model_id = store.create_cost_model("t1", LATENCY, None, "cpu").id
    cost = run(submit, store, artifacts, settings, sparsity={"budget": 0.5},
               cost_model={"kind": "fitted", "id": model_id, **cost_model})
    assert cost["unit"] == "ms" and cost["fixed"] == pytest.approx(0.025)
    assert cost["dense"] == pytest.approx(DENSE_MS)
    assert cost["budget"] == pytest.approx(budget)
    assert cost["predicted"] == pytest.approx(budget, rel=0.01)


def test_another_tenant_s_cost_model_is_not_found(submit: Submit, store: JobStore,
                                                  artifacts: ArtifactStore,
                                                  settings: Settings) -> None:
    model_id = store.create_cost_model("t2", LATENCY, None, "cpu").id
    job_id = submit(cost_model={"kind": "fitted", "id": model_id})
    run_job(job_id, store, artifacts, settings)
    job = store.get_job(job_id)
    assert job is not None and job.status == "failed"
    assert job.error == f"ValueError: cost model '{model_id}' not found"


def test_a_job_validates_its_cost_model_and_computes_block_costs_once(
        submit: Submit, store: JobStore, artifacts: ArtifactStore, settings: Settings,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from spartan_service.costmodels import bridge

    calls = {"validate": 0, "block_costs": 0}

    def counted(name: str, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(bridge, "validate_cost_model",
                        counted("validate", bridge.validate_cost_model))
    monkeypatch.setattr(bridge, "block_costs", counted("block_costs", bridge.block_costs))
    model_id = store.create_cost_model("t1", LATENCY, None, "cpu").id
    run(submit, store, artifacts, settings, sparsity={"budget": 0.5},
        cost_model={"kind": "fitted", "id": model_id})
    assert calls == {"validate": 1, "block_costs": 1}


def test_a_layer_best_left_dense_keeps_all_its_weights(
        submit: Submit, store: JobStore, artifacts: ArtifactStore, settings: Settings) -> None:
    # layers.0's sparse line reaches its dense latency (0.02 ms) at 100 of 2048 weights: at 70%
    # of the dense latency it is better kept dense and head masked harder (dense_choice).
    piecewise = json.loads(json.dumps(LATENCY))
    piecewise["layers"]["layers.0"]["dense_latency"] = 0.02
    model_id = store.create_cost_model("t1", piecewise, None, "cpu").id
    job_id = submit(sparsity={"budget": 0.7}, cost_model={"kind": "fitted", "id": model_id})
    run_job(job_id, store, artifacts, settings)
    job = store.get_job(job_id)
    assert job is not None and job.status == "succeeded", job.error
    report = json.loads(artifacts.read_bytes(job_id, "report.json"))
    cost = report["cost"]
    dense = 0.01 + 0.02 + 0.005 + 320 * 2e-4  # layers.0 capped at its dense latency
    assert cost["dense"] == pytest.approx(dense)
    assert cost["budget"] == pytest.approx(0.7 * dense)
    assert cost["fixed"] == pytest.approx(0.01 + 0.02 + 0.005)
    assert cost["within_budget"] and cost["predicted"] <= cost["budget"] * (1 + 1e-4)
    assert [lay["name"] for lay in report["sparsity"]["layers"]] == ["head.weight"]
    assert any("layers.0.weight" in w and "dense" in w for w in job.warnings)
