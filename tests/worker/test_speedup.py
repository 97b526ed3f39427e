"""The report's speedup section and model.sparse.safetensors of a finished job."""

from __future__ import annotations

import json

import torch
from torch import nn

from spartan import load_sparse
from spartan_service.jobs.artifacts import ArtifactStore
from spartan_service.jobs.settings import Settings
from spartan_service.jobs.store import JobStore
from spartan_service.worker.runner import run_job
from spartan_service.worker.speedup import sentence, speedup_report
from spartan_service.zoo import build_model
from tests.files import artifact_file
from tests.worker.conftest import Submit


def test_finished_job_has_speedup_section_and_sparse_model(
        submit: Submit, store: JobStore, artifacts: ArtifactStore, settings: Settings) -> None:
    job_id = submit()
    run_job(job_id, store, artifacts, settings)
    job = store.get_job(job_id)
    assert job is not None and job.status == "succeeded", job.error if job else None
    report = json.loads(artifacts.read_bytes(job_id, "report.json"))
    sec = report["speedup"]
    assert sec["device"] == "cpu" and sec["batch_size"] == 64
    assert [r["batch"] for r in sec["batches"]] == [1, 64]
    for row in sec["batches"]:
        assert row["dense_ms"] > 0 and row["sparse_ms"] > 0
        assert row["speedup"] == row["dense_ms"] / row["sparse_ms"]
    assert set(sec["kernels"]) == {"layers.0.weight", "head.weight"}
    assert sec["predicted"]["sparse"] == report["cost"]["predicted"]
    assert sec["summary"].startswith("The sparse model")
    assert ("not faster" in sec["summary"]) == (not sec["faster"])
    path = artifact_file(artifacts, job_id, "model.sparse.safetensors")
    loaded = load_sparse(path, "cpu", build_model=build_model)
    assert loaded.kernels == sec["kernels"]
    dense = build_model("mlp", {"hidden": [32]}, (64,), 10)
    from safetensors.torch import load_file

    dense.load_state_dict(load_file(str(artifact_file(artifacts, job_id, "model.safetensors"))))
    x = torch.randn(3, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), dense.eval()(x), rtol=1e-4, atol=1e-5)


def test_sentence_says_plainly_when_not_faster() -> None:
    slow = [{"batch": 1, "speedup": 0.9}, {"batch": 64, "speedup": 0.97}]
    text = sentence(slow, "cpu", {"fc.weight": "dense"})
    assert "not faster" in text and "kept the dense kernel" in text and "0.97x" in text
    fast = [{"batch": 1, "speedup": 1.5}, {"batch": 64, "speedup": 3.2}]
    assert sentence(fast, "cpu", {"fc.weight": "csr"}).startswith(
        "The sparse model runs 3.20x as fast")


def test_dense_model_is_reported_not_faster() -> None:
    torch.set_num_threads(1)
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    sparse, sec = speedup_report(model, torch.randn(16, 32), 16, torch.device("cpu"),
                                 repeats=3)
    assert set(sparse.kernels.values()) == {"dense"} and sec["predicted"] is None
    assert sec["batches"][-1]["batch"] == 16
