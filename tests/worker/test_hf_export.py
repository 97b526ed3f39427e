"""Jobs on Hugging Face text models export a model.sparse.safetensors that spartan.load_sparse
rebuilds from the file alone (the config stored beside the tensors, no model folder, no
pickle), with the trained model's outputs; the speedup timing passes the attention mask."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from spartan import load_sparse
from spartan_service.jobs.artifacts import ArtifactStore
from spartan_service.jobs.settings import Settings
from spartan_service.jobs.spec import JobSpec
from spartan_service.jobs.store import JobStore
from spartan_service.worker.runner import run_job
from spartan_service.worker.speedup import speedup_report
from spartan_service.zoo import build_model, hf
from tests import workloads
from tests.files import artifact_file


@pytest.fixture
def roots(tmp_path: Path) -> Path:
    storage = tmp_path / "storage"
    workloads.tiny_gpt2(storage / "gpt2")
    workloads.tiny_bert(storage / "bert")
    workloads.text_parquet(storage / "reviews.parquet", n=48)
    return storage


def spec(model: Path, data: Path, task: str) -> dict[str, Any]:
    return {"model": {"arch": f"hf:{model}"},
            "data": {"dataset": "hf", "kwargs": {"path": str(data), "max_length": 10}},
            "sparsity": {"method": "spartan", "budget": 0.3},
            "training": {"task": task, "epochs": 1, "batch_size": 8, "max_steps": 4,
                         "lr": 3e-3}}


def run_text_job(roots: Path, tmp_path: Path, body: dict[str, Any]
                 ) -> tuple[ArtifactStore, str, dict[str, Any]]:
    """(artifacts, job id, report) of a job run to success by the worker's own code."""
    settings = Settings(data_dir=tmp_path / "data", database_url=None, broker_url=None,
                        api_tokens=None, data_roots=str(roots), progress_interval_s=0.05)
    store = JobStore(settings.db_url)
    job_id = store.create_job("t1", JobSpec.model_validate(body).model_dump(mode="json"),
                              "cpu", "test").id
    run_job(job_id, store, ArtifactStore(settings.artifacts_dir), settings)
    job = store.get_job(job_id)
    store.close()
    assert job is not None and job.status == "succeeded", job.error if job else None
    artifacts = ArtifactStore(settings.artifacts_dir)
    return artifacts, job_id, json.loads(artifacts.read_bytes(job_id, "report.json"))


def trained_and_loaded(artifacts: ArtifactStore, job_id: str, report: dict[str, Any],
                       folder: Path, task: str) -> tuple[nn.Module, Any]:
    """The job's written model.safetensors in its architecture, and load_sparse of its
    model.sparse.safetensors from the file alone (no build_model, no model folder)."""
    trained = build_model(f"hf:{folder}", {"pretrained": False}, None,
                          report["model"]["num_classes"], task, True, [folder.parent]).eval()
    trained.load_state_dict(load_file(str(artifact_file(artifacts, job_id,
                                                        "model.safetensors"))))
    return trained, load_sparse(artifact_file(artifacts, job_id, "model.sparse.safetensors"),
                                "cpu")


def same_logits(got_model: Any, want_model: nn.Module) -> None:
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    with torch.no_grad():
        got = hf.logits(got_model(input_ids=ids, attention_mask=mask))
        want = hf.logits(want_model(input_ids=ids, attention_mask=mask))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("name", "task", "head"), [
    ("gpt2", "causal_lm", "causal_lm"),
    ("bert", "classification", "sequence_classification"),
])
def test_load_sparse_rebuilds_a_text_model_from_the_file_alone(
        name: str, task: str, head: str, roots: Path, tmp_path: Path) -> None:
    artifacts, job_id, report = run_text_job(
        roots, tmp_path, spec(roots / name, roots / "reviews.parquet", task))
    assert "error" not in report["speedup"], report["speedup"]
    path = artifact_file(artifacts, job_id, "model.sparse.safetensors")
    with safe_open(str(path), framework="pt") as f:
        stored = json.loads((f.metadata() or {})["model"])
    assert stored["hf"]["head"] == head and stored["hf"]["config"]["model_type"] == name
    trained, loaded = trained_and_loaded(artifacts, job_id, report, roots / name, task)
    assert loaded.kernels == report["speedup"]["kernels"]
    same_logits(loaded, trained)


def test_a_bad_description_is_a_clear_error(tmp_path: Path) -> None:
    from spartan.hf import rebuild

    with pytest.raises(ValueError, match="bad Hugging Face model description"):
        rebuild({"head": "os.system", "config": {}})
    with pytest.raises(ValueError, match="cannot rebuild the 'no-such-type' model"):
        rebuild({"head": "causal_lm", "config": {"model_type": "no-such-type"}})


def test_speedup_timing_passes_the_attention_mask(tmp_path: Path) -> None:
    folder = workloads.tiny_bert(tmp_path / "bert")
    model = build_model(f"hf:{folder}", {}, None, 2, "classification", True, [tmp_path])
    seen: list[dict[str, Any]] = []

    def hook(_: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        seen.append(kwargs)

    model.register_forward_pre_hook(hook, with_kwargs=True)
    ids = torch.randint(5, 20, (4, 6))
    mask = torch.ones(4, 6, dtype=torch.int64)
    mask[2:, 3:] = 0
    _, section = speedup_report(model, ids, 4, torch.device("cpu"), repeats=2, mask=mask)
    assert [r["batch"] for r in section["batches"]] == [1, 4]
    assert seen and all("attention_mask" in kw for kw in seen)
    assert {tuple(kw["attention_mask"].shape) for kw in seen} == {(1, 6), (4, 6)}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gpt2", "bert"])
def test_a_shrunk_text_model_loads_from_the_file_alone(name: str, roots: Path,
                                                      tmp_path: Path) -> None:
    """A channels job on a Hugging Face model: MLP units removed physically; the shrunk file
    rebuilds (config stored beside the tensors) with the masked model's outputs."""
    task = "causal_lm" if name == "gpt2" else "classification"
    body = spec(roots / name, roots / "reviews.parquet", task)
    body["sparsity"] = {"method": "spartan", "structure": "channels", "budget": 0.5,
                        "min_keep": 0.25}
    artifacts, job_id, report = run_text_job(roots, tmp_path, body)
    trained, loaded = trained_and_loaded(artifacts, job_id, report, roots / name, task)
    assert sum(p.numel() for p in loaded.parameters()) < \
        sum(p.numel() for p in trained.parameters())
    same_logits(loaded, trained)


@pytest.mark.slow
def test_a_profiled_text_model_trains_to_a_latency_budget(roots: Path, tmp_path: Path) -> None:
    """Structured profile job of a Hugging Face model on this worker, then a channels job
    naming its cost model with a budget in ms: the shrunk model is measured beside the
    promise."""
    from spartan_service.costmodels.channel_bridge import channel_cost_split
    from spartan_service.jobs.profile_spec import ProfileSpec

    settings = Settings(data_dir=tmp_path / "data", database_url=None, broker_url=None,
                        api_tokens=None, data_roots=str(roots), progress_interval_s=0.05)
    store = JobStore(settings.db_url)
    artifacts = ArtifactStore(settings.artifacts_dir)
    body = spec(roots / "bert", roots / "reviews.parquet", "classification")
    profile = ProfileSpec.model_validate({
        "name": "bert-channels", "model": body["model"], "data": body["data"],
        "structure": "channels", "widths": [0.25, 0.5, 1.0], "batch_sizes": [8],
        "quick": True}).model_dump(mode="json")
    profile_id = store.create_job("t1", profile, "cpu", "bert-channels", kind="profile").id
    run_job(profile_id, store, artifacts, settings)
    done = store.get_job(profile_id)
    assert done is not None and done.status == "succeeded", done.error if done else None
    (row,) = store.profile_job_cost_models(profile_id)
    assert any(".intermediate.dense" in name for name in row.data["layers"])
    store.close()

    model = build_model(f"hf:{roots / 'bert'}", {}, None, 2, "classification", True, [roots])
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 5, 6, 7]])
    fixed, variable = channel_cost_split(row.data, model, ids)
    body["sparsity"] = {"method": "spartan", "structure": "channels", "min_keep": 0.25}
    body["cost_model"] = {"kind": "fitted", "name": "bert-channels",
                          "budget_ms": fixed + 0.5 * variable}
    artifacts, job_id, report = run_text_job(roots, tmp_path, body)
    assert report["latency"]["promised"] == pytest.approx(fixed + 0.5 * variable)
    assert report["deployment"]["measured"] > 0
