"""Cost models by hardware, and the loop closed: a job picks the version measured on its
worker's hardware (warns, or refuses when strict, otherwise), and after training measures the
exported model beside the prediction, stored with the cost model for its error and a refit."""

from __future__ import annotations

import json
from typing import Any

import pytest

from spartan_service.costmodels import hardware
from spartan_service.costmodels.deployment import evaluate, refit, weights_latency_range
from spartan_service.jobs.artifacts import ArtifactStore
from spartan_service.jobs.models import CostModel
from spartan_service.jobs.settings import Settings
from spartan_service.jobs.store import JobStore
from spartan_service.worker.runner import run_job
from tests.worker.conftest import Submit
from tests.worker.test_profile_run import submit_profile

MLP = {"arch": "mlp", "kwargs": {"hidden": [256]}}


@pytest.fixture
def profiled(store: JobStore, artifacts: ArtifactStore, settings: Settings) -> CostModel:
    """A cost model of the tiny MLP at batch 64, profiled by a profile job on this worker."""
    # csr alone: on a model this small "auto" keeps dense kernels (flat costs, nothing to buy)
    job_id = submit_profile(store, batch_sizes=[64], kernels=["csr"], model=MLP)
    run_job(job_id, store, artifacts, settings)
    (row,) = store.profile_job_cost_models(job_id)
    return row


def elsewhere(store: JobStore, row: CostModel, **changes: Any) -> CostModel:
    """Another version of the same name, as if measured on other hardware."""
    assert row.hardware is not None
    hw = {**row.hardware, **changes}
    return store.create_cost_model(
        row.tenant, {**row.data, "hardware": hw}, row.profile, row.name, hardware=hw,
        fingerprint=hardware.fingerprint(hw), hardware_label=hardware.label(hw),
        batch=row.batch, source="upload")


def train(submit: Submit, store: JobStore, artifacts: ArtifactStore, settings: Settings,
          cost_model: dict[str, Any], data: dict[str, Any]
          ) -> tuple[Any, dict[str, Any] | None]:
    # CSR on this tiny MLP barely beats dense: its intercepts and overhead are most of the
    # dense latency, and how much depends on the machine's load while profiling. A budget
    # halfway from the fixed cost to dense under `data` (the cost model the job will use) is
    # always feasible; uniform keeps every layer some weights.
    fixed, dense = weights_latency_range(data)
    job_id = submit(model=MLP, cost_model={"kind": "fitted", "budget_ms":
                                           fixed + 0.5 * (dense - fixed), **cost_model},
                    sparsity={"allocation": "uniform"})
    run_job(job_id, store, artifacts, settings)
    job = store.get_job(job_id)
    assert job is not None
    report = (json.loads(artifacts.read_bytes(job_id, "report.json"))
              if artifacts.exists(job_id, "report.json") else None)
    return job, report


def test_job_measures_its_model_beside_the_prediction(
        profiled: CostModel, submit: Submit, store: JobStore, artifacts: ArtifactStore,
        settings: Settings) -> None:
    job, report = train(submit, store, artifacts, settings, {"name": "tiny-cpu"},
                        profiled.data)
    assert job.status == "succeeded", job.error
    assert report is not None
    assert report["cost"]["cost_model"]["id"] == profiled.id
    assert report["cost"]["cost_model"]["hardware_match"] is True
    dep = report["deployment"]
    assert dep["batch_size"] == 64 and dep["unit"] == "ms" and dep["device"] == "cpu"
    assert [b["batch"] for b in dep["batches"]] == [1, 64]
    assert dep["measured"] > 0 and dep["predicted"] == pytest.approx(report["cost"]["predicted"])
    assert {lay["name"] for lay in dep["layers"]} == {"layers.0", "head"}
    for lay in dep["layers"]:
        assert lay["measured"] > 0 and lay["nnz_blocks"] > 0
    assert dep["within_tolerance"] == (dep["error"] <= 0.15)
    assert (dep["message"] is not None) == (not dep["within_tolerance"]
                                           or dep["cost_model"]["needs_refit"])
    # Stored with the cost model as a held-out point.
    (point,) = store.deployment_points([profiled.id])
    assert point.job_id == job.id and point.batch == 64
    assert point.measured == pytest.approx(dep["measured"])
    assert point.fingerprint == profiled.fingerprint
    assert dep["cost_model"]["points"] == 1


def test_name_picks_the_version_measured_here(
        profiled: CostModel, submit: Submit, store: JobStore, artifacts: ArtifactStore,
        settings: Settings) -> None:
    other = elsewhere(store, profiled, cpu="Some Other CPU 9000")
    assert other.version == 2  # newer, but measured elsewhere
    job, report = train(submit, store, artifacts, settings, {"name": "tiny-cpu"},
                        profiled.data)
    assert job.status == "succeeded", job.error
    assert report is not None and report["cost"]["cost_model"]["id"] == profiled.id
    assert not any("other hardware" in w for w in job.warnings)


def test_other_hardware_warns_and_strict_refuses(
        profiled: CostModel, submit: Submit, store: JobStore, artifacts: ArtifactStore,
        settings: Settings) -> None:
    other = elsewhere(store, profiled, threads=64, torch="1.0.0")
    job, report = train(submit, store, artifacts, settings, {"id": other.id}, other.data)
    assert job.status == "succeeded", job.error
    (warning,) = [w for w in job.warnings if "other hardware" in w]
    assert "threads: 64 -> 1" in warning and "torch: '1.0.0'" in warning
    assert report is not None and warning in report["warnings"]
    assert report["cost"]["cost_model"]["hardware_match"] is False

    job, report = train(submit, store, artifacts, settings,
                        {"id": other.id, "strict_hardware": True}, other.data)
    assert job.status == "failed" and report is None
    assert job.error is not None and "strict_hardware" in job.error
    assert "threads: 64 -> 1" in job.error
    # By name with no version from here at all: strict refuses too.
    store.create_cost_model(profiled.tenant, other.data, other.profile, "only-elsewhere",
                            hardware=other.hardware, fingerprint=other.fingerprint,
                            hardware_label=other.hardware_label, batch=64)
    job, _ = train(submit, store, artifacts, settings,
                   {"name": "only-elsewhere", "strict_hardware": True}, other.data)
    assert job.status == "failed" and "strict_hardware" in (job.error or "")


def test_refit_lowers_the_error_on_the_stored_points(
        profiled: CostModel, submit: Submit, store: JobStore, artifacts: ArtifactStore,
        settings: Settings) -> None:
    # A deliberately wrong version (every layer and the overhead 3x too slow) used by a job.
    data = json.loads(json.dumps(profiled.data))
    for lay in data["layers"].values():
        lay["intercept"] *= 3
        lay["slope"] *= 3
        if "dense_latency" in lay:  # the whole curve, its dense cap too
            lay["dense_latency"] *= 3
    data["overhead"] = 3 * (data.get("overhead") or 0.01) + 0.05
    wrong = store.create_cost_model(profiled.tenant, data, profiled.profile, "wrong",
                                    hardware=profiled.hardware,
                                    fingerprint=profiled.fingerprint, batch=64)
    job, report = train(submit, store, artifacts, settings, {"name": "wrong"}, data)
    assert job.status == "succeeded", job.error
    assert report is not None
    dep = report["deployment"]
    assert dep["error"] > 0.15 and not dep["within_tolerance"]
    assert dep["refit"]["url"] == f"/v1/cost-models/{wrong.id}/refit"
    assert any("refit" in w for w in job.warnings)
    points = [{"job_id": p.job_id, "batch": p.batch, "measured": p.measured,
               "layers": p.layers} for p in store.deployment_points([wrong.id])]
    before = evaluate(wrong.data, points)
    assert before["needs_refit"]
    new, _, summary = refit(wrong.data, wrong.profile, points)
    after = evaluate(new, points)
    assert after["mape"] < before["mape"] and not after["needs_refit"]
    assert summary["mape_before"] == pytest.approx(before["mape"])
    assert summary["mape_after"] == pytest.approx(after["mape"])


def channel_budget_ms(cost_model: dict[str, Any], fraction: float) -> float:
    """A latency budget `fraction` of the way from the fixed cost (overhead, intercepts: what
    no pruning removes) to the dense cost of MLP under a structured cost model: always
    feasible, however the timing splits into fixed and variable parts."""
    import torch

    from spartan_service.costmodels.channel_bridge import channel_cost_split
    from spartan_service.zoo.build import build_model

    model = build_model(MLP["arch"], MLP["kwargs"], (64,), 10)
    fixed, variable = channel_cost_split(cost_model, model, torch.zeros(2, 64))
    return fixed + fraction * variable


@pytest.fixture
def profiled_channels(store: JobStore, artifacts: ArtifactStore, settings: Settings
                      ) -> CostModel:
    """A structured (channels) cost model of the tiny MLP at batch 64, from a profile job."""
    job_id = submit_profile(store, name="tiny-channels", structure="channels",
                            kernels=["auto"], widths=[0.25, 0.5, 1.0], batch_sizes=[64],
                            model=MLP)
    run_job(job_id, store, artifacts, settings)
    (row,) = store.profile_job_cost_models(job_id)
    return row


def test_structured_job_measures_its_shrunk_model_and_the_refit_folds_it_in(
        profiled_channels: CostModel, submit: Submit, store: JobStore,
        artifacts: ArtifactStore, settings: Settings) -> None:
    row = profiled_channels
    job_id = submit(model=MLP, cost_model={"kind": "fitted", "name": "tiny-channels",
                                           "budget_ms": channel_budget_ms(row.data, 0.4)},
                    sparsity={"structure": "channels", "min_keep": 0.1})
    run_job(job_id, store, artifacts, settings)
    job = store.get_job(job_id)
    assert job is not None and job.status == "succeeded", job.error if job else None
    report = json.loads(artifacts.read_bytes(job_id, "report.json"))
    dep = report["deployment"]
    assert dep["batch_size"] == 64 and [b["batch"] for b in dep["batches"]] == [1, 64]
    # The shrunk model's widths: the hidden layer lost units, the head kept its 10 outputs.
    layers = {lay["name"]: lay for lay in dep["layers"]}
    assert set(layers) == set(row.data["layers"]) == {"layers.0", "head"}
    hidden = layers["layers.0"]["kept_out"]
    assert 0 < hidden < 256 and layers["head"]["kept_in"] == hidden
    assert layers["head"]["kept_out"] == 10 and layers["layers.0"]["kept_in"] == 64
    assert layers["layers.0"]["nnz_blocks"] == 64 * hidden
    for lay in layers.values():
        assert lay["measured"] > 0 and lay["predicted"] > 0 and lay["kernel"] == "dense"
    # The prediction is the channel Sparsifier's for the same widths (the report's cost).
    assert dep["predicted"] == pytest.approx(report["cost"]["predicted"], rel=1e-6)
    # The whole model is the shrunk model the speedup section timed at batch 64.
    assert dep["measured"] == pytest.approx(report["speedup"]["batches"][-1]["sparse_ms"])
    (point,) = store.deployment_points([row.id])
    assert point.job_id == job_id and {lay["name"]: lay["kept_out"] for lay in point.layers} \
        == {"layers.0": hidden, "head": 10}

    # A version 3x too slow everywhere: its error on the point is large; the refit (the code
    # of POST /v1/cost-models/{id}/refit) makes one whose error on it drops below 15%.
    data = json.loads(json.dumps(row.data))
    for lay in data["layers"].values():
        for key in ("intercept", "slope", "slope_out", "slope_in"):
            lay[key] = 3 * lay.get(key, 0.0)
    data["overhead"] = 3 * (data.get("overhead") or 0.01)
    points = [{"job_id": p.job_id, "batch": p.batch, "measured": p.measured,
               "layers": p.layers} for p in store.deployment_points([row.id])]
    before = evaluate(data, points)
    assert before["points"] == 1 and before["needs_refit"]
    new, new_profile, summary = refit(data, row.profile, points)
    assert summary["layers_calibrated"] == ["head", "layers.0"]
    assert summary["dense_caps_measured"] == []  # a shrunk layer's line is scaled, not capped
    after = evaluate(new, points)
    assert after["mape"] < before["mape"] and not after["needs_refit"]
    assert new_profile is not None
    deployed = [s for lay in new_profile["layers"] for s in lay["samples"] if s.get("deployed")]
    assert {(s["kept_in"], s["kept_out"]) for s in deployed} == {(64, hidden), (hidden, 10)}
