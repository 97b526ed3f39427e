"""run_job in-process with the workload fields: a resumed job with recipes and a dense twin
ends bit for bit where the uninterrupted one does, twin included; eval_every and max_steps
shape the records."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from sqlalchemy import update

from spartan_service.jobs.artifacts import ArtifactStore
from spartan_service.jobs.models import Job
from spartan_service.jobs.settings import Settings
from spartan_service.jobs.spec import JobSpec
from spartan_service.jobs.store import JobStore, utcnow
from spartan_service.worker import checkpoint
from spartan_service.worker.runner import run_job
from tests import workloads
from tests.files import artifact_file
from tests.worker.conftest import TINY, Submit

RECIPE = {"training": {"epochs": 2, "checkpoint_every": 5, "grad_accum": 2, "precision": "bf16",
                       "label_smoothing": 0.1, "lr_warmup_frac": 0.2, "grad_clip": 1.0,
                       "weight_decay": 0.01}}


class Crash(BaseException):
    """Stands for the worker process dying."""


def report_of(artifacts: ArtifactStore, job_id: str) -> dict[str, Any]:
    return json.loads(artifacts.read_bytes(job_id, "report.json"))  # type: ignore[no-any-return]


def test_resumed_recipe_job_with_a_dense_twin_matches_the_uninterrupted_one(
    submit: Submit, store: JobStore, artifacts: ArtifactStore, settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def spec() -> str:  # baseline is no section: stored as the API stores a valid spec
        body = {**TINY, "training": {**TINY["training"], **RECIPE["training"]},
                "baseline": "train"}
        return store.create_job("t1", JobSpec.model_validate(body).model_dump(mode="json"),
                                "cpu", "test").id

    reference = spec()
    run_job(reference, store, artifacts, settings)
    expected = load_file(str(artifact_file(artifacts, reference, "model.safetensors")))
    ref_report = report_of(artifacts, reference)
    # 23 batches of digits an epoch, 2 a step: 12 steps an epoch.
    assert ref_report["training"]["steps"] == 24
    assert ref_report["accuracy"]["baseline"] == "train"
    assert ref_report["accuracy"]["dense"] > 0.5 and ref_report["accuracy"]["sparse"] > 0.3

    job_id = spec()
    save = checkpoint.save_checkpoint
    saved: list[int] = []

    def crash_after_second(store_: ArtifactStore, jid: str, state: dict[str, Any]) -> None:
        save(store_, jid, state)
        saved.append(state["loop"]["step"])
        if len(saved) == 2:
            raise Crash

    monkeypatch.setattr(checkpoint, "save_checkpoint", crash_after_second)
    with pytest.raises(Crash):
        run_job(job_id, store, artifacts, settings)
    monkeypatch.setattr(checkpoint, "save_checkpoint", save)
    assert saved == [5, 10]
    with store.session() as s:
        s.execute(update(Job).where(Job.id == job_id)
                  .values(heartbeat_at=utcnow() - timedelta(seconds=600)))
    stale = store.stale_jobs(settings.heartbeat_timeout_s)[0]
    assert store.requeue(job_id, stale.heartbeat_at)
    run_job(job_id, store, artifacts, settings)
    job = store.get_job(job_id)
    assert job is not None and job.status == "succeeded" and job.resumed_from_step == 10
    got = load_file(str(artifact_file(artifacts, job_id, "model.safetensors")))
    for name in expected:
        assert torch.equal(got[name], expected[name]), name
    assert report_of(artifacts, job_id)["accuracy"] == ref_report["accuracy"]  # twin too


def test_eval_every_and_max_steps(submit: Submit, store: JobStore, artifacts: ArtifactStore,
                                  settings: Settings) -> None:
    job_id = submit(training={"epochs": 5, "eval_every": 4, "max_steps": 10,
                              "checkpoint_every": 100})
    run_job(job_id, store, artifacts, settings)
    job = store.get_job(job_id)
    assert job is not None and job.status == "succeeded", job.error if job else None
    records = [json.loads(line) for line in
               artifacts.read_bytes(job_id, "metrics.jsonl").decode().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [4, 8]
    assert [r["step"] for r in records if r["kind"] == "epoch"] == [10]  # ended mid-epoch
    report = report_of(artifacts, job_id)
    assert report["training"]["steps"] == 10 and job.progress["total_steps"] == 10
    assert report["accuracy"]["baseline"] == "none" and report["accuracy"]["dense"] is None


@pytest.mark.slow
def test_two_ranks_stream_npy_as_one_process_does(
        store: JobStore, artifacts: ArtifactStore, settings: Settings, tmp_path: Path) -> None:
    """A streamed dataset across two ranks (gloo): each takes half of every global batch, so
    the weights match the single-process job's to float tolerance."""
    x, y = workloads.npy_pair(tmp_path / "storage", n=200, dim=8, classes=3)
    roots = settings.model_copy(update={"data_roots": str(tmp_path / "storage")})
    body = {"model": {"arch": "mlp", "kwargs": {"hidden": [16]}},
            "data": {"dataset": "npy", "kwargs": {"x": str(x), "y": str(y)}},
            "sparsity": {"method": "spartan", "budget": 0.3},
            "training": {"epochs": 1, "batch_size": 32, "lr": 0.01, "checkpoint_every": 100}}
    ids = []
    for processes in (1, 2):
        spec = JobSpec.model_validate({**body, "resources": {"processes": processes}})
        ids.append(store.create_job("t1", spec.model_dump(mode="json"), "cpu", "test").id)
        run_job(ids[-1], store, artifacts, roots)
        job = store.get_job(ids[-1])
        assert job is not None and job.status == "succeeded", job and job.error
    assert report_of(artifacts, ids[1])["training"]["world_size"] == 2
    one, two = (load_file(str(artifact_file(artifacts, i, "model.safetensors"))) for i in ids)
    for name, w in one.items():
        torch.testing.assert_close(two[name], w, rtol=1e-5, atol=1e-5)
