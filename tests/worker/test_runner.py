"""run_job in-process: results, progress, failures, cancellation and resuming after a crash."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save
from sqlalchemy import update

from spartan_service.jobs.artifacts import ArtifactStore
from spartan_service.jobs.models import Job, utcnow
from spartan_service.jobs.report import Report
from spartan_service.jobs.settings import Settings
from spartan_service.jobs.store import JobStore
from spartan_service.jobs.upload_store import UploadStore
from spartan_service.worker import checkpoint, objectives, training
from spartan_service.worker.lease import Lease
from spartan_service.worker.runner import run_job
from spartan_service.zoo import build_model, builtins
from tests.files import artifact_file
from tests.worker.conftest import TINY, Submit


def test_tiny_job_writes_exact_sparse_results(submit: Submit, store: JobStore,
                                              artifacts: ArtifactStore,
                                              settings: Settings) -> None:
    job_id = submit()
    run_job(job_id, store, artifacts, settings)
    job = store.get_job(job_id)
    assert job is not None and job.status == "succeeded", job.error if job else None
    names = {a["name"] for a in artifacts.list(job_id)}
    assert names == {"model.safetensors", "model.sparse.safetensors", "masks.safetensors",
                     "report.json", "metrics.jsonl"}
    weights = load_file(str(artifact_file(artifacts, job_id, "model.safetensors")))
    masks = load_file(str(artifact_file(artifacts, job_id, "masks.safetensors")))
    assert set(masks) == {"layers.0.weight", "head.weight"}
    kept = total = 0
    for name, mask in masks.items():
        assert mask.dtype == torch.bool and mask.shape == weights[name].shape
        assert torch.all(weights[name][~mask] == 0)  # exact zeros where masked
        kept, total = kept + int(mask.sum()), total + mask.numel()
    assert abs(kept / total - 0.25) <= 1 / total  # density == budget (default cost)
    report = json.loads(artifacts.read_bytes(job_id, "report.json"))
    Report.model_validate(report)  # every key is a field of the typed report
    assert report["sparsity"]["density"] == pytest.approx(kept / total)
    assert {r["name"] for r in report["sparsity"]["layers"]} == set(masks)
    assert report["cost"]["unit"] == "params" and report["cost"]["within_budget"]
    assert report["cost"]["predicted"] == kept
    assert 0.3 < report["accuracy"]["sparse"] <= 1.0 and report["accuracy"]["dense"] is None
    assert report["training"]["steps"] == 23 and len(report["curve"]) == 1
    lines = [json.loads(x) for x in artifacts.read_bytes(job_id, "metrics.jsonl").splitlines()]
    assert lines[-1]["kind"] == "epoch" and lines[-1]["val_accuracy"] is not None
    assert job.progress["step"] == job.progress["total_steps"] == 23
    assert job.metrics["val_accuracy"] == report["accuracy"]["sparse"]
    assert job.metrics["history"][0]["epoch"] == 1
    timed = report["speedup"]["batches"][-1]
    assert report["latency"] == {
        "unit": "ms", "device": "cpu", "batch_size": 64, "dense_measured": timed["dense_ms"],
        "sparse_measured": timed["sparse_ms"], "predicted": None, "promised": None,
        "kept": None, "measured_vs_promised": None,
        "note": None}  # a parameter budget promises no latency
    assert report["training"]["world_size"] == 1


def test_dense_job_reports_every_weight_kept(submit: Submit, store: JobStore,
                                             artifacts: ArtifactStore,
                                             settings: Settings) -> None:
    job_id = submit(sparsity={"method": "dense"})
    run_job(job_id, store, artifacts, settings)
    job = store.get_job(job_id)
    assert job is not None and job.status == "succeeded", job.error if job else None
    report = Report.model_validate_json(artifacts.read_bytes(job_id, "report.json"))
    assert report.sparsity.method == "dense" and report.sparsity.density == 1.0
    assert report.sparsity.measured_density > 0.99
    assert {row.kept_fraction for row in report.sparsity.layers} == {1.0}
    assert report.accuracy.sparse is None and report.accuracy.dense == report.accuracy.final
    assert report.cost.predicted == report.cost.dense  # every weight kept


def on_steps(monkeypatch: pytest.MonkeyPatch, hook: Callable[[int], None]) -> None:
    """Call hook(n) before the n-th training step (n from 1)."""
    lr_at = training.lr_at
    calls = 0

    def counted(*args: Any) -> float:
        nonlocal calls
        calls += 1
        hook(calls)
        return lr_at(*args)

    monkeypatch.setattr(training, "lr_at", counted)


def test_progress_is_written_while_training(submit: Submit, store: JobStore,
                                            artifacts: ArtifactStore, settings: Settings,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, Any]] = []
    stored = threading.Event()  # a heartbeat has stored progress
    heartbeat = store.heartbeat

    def spy(job_id: str, progress: dict[str, Any] | None = None, **kw: Any) -> bool:
        stop = heartbeat(job_id, progress, **kw)
        if progress is not None:
            seen.append(progress)
            stored.set()
        return stop

    monkeypatch.setattr(store, "heartbeat", spy)
    phases: list[str] = []
    update = Lease.update

    def spy_update(self: Lease, progress: dict[str, Any], metrics: Any = None) -> None:
        phases.append(progress["phase"])
        update(self, progress, metrics)

    monkeypatch.setattr(Lease, "update", spy_update)

    def wait_for_a_beat(step: int) -> None:
        if step % 10 == 0:  # steps 10, 20, 30, 40 of 46: each waits until a beat stored one
            stored.clear()
            assert stored.wait(60), "no heartbeat while training"

    on_steps(monkeypatch, wait_for_a_beat)
    run_job(submit(training={"epochs": 2}), store, artifacts, settings)
    # 46 steps: budget anneals over the first 20%, masks are frozen for the last 20%.
    assert phases[0] == "warmup" and phases[-1] == "finetune" and "train" in phases
    mid = [p for p in seen if 0 < p["step"] < p["total_steps"]]
    assert len(mid) >= 3
    p = mid[-1]
    assert p["total_steps"] == 46 and p["epochs"] == 2 and p["loss"] > 0
    assert 0 <= p["accuracy"] <= 1 and p["eta_s"] > 0 and p["steps_per_s"] > 0
    assert 0.25 <= p["budget_fraction"] <= 1 and p["beta"] > 0
    assert any(q["val_accuracy"] is not None for q in mid)  # after the first epoch


def test_a_raising_model_factory_fails_the_job(submit: Submit, store: JobStore,
                                               artifacts: ArtifactStore, settings: Settings,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("factory exploded\nwith details")

    monkeypatch.setitem(builtins.BUILTINS, "mlp", explode)  # type: ignore[arg-type]
    job_id = submit()
    run_job(job_id, store, artifacts, settings)
    job = store.get_job(job_id)
    assert job is not None and job.status == "failed"
    assert job.error == "RuntimeError: factory exploded with details"
    assert artifacts.list(job_id) == []


@pytest.mark.parametrize(("sections", "needle"), [
    ({"model": {"arch": "mlp", "kwargs": {"bogus": 1}}}, "unknown kwargs for model 'mlp'"),
    ({"data": {"dataset": "upload", "upload": "nope"}}, "upload 'nope' not found"),
])
def test_bad_inputs_fail_with_a_readable_message(submit: Submit, store: JobStore,
                                                 artifacts: ArtifactStore, settings: Settings,
                                                 sections: dict[str, Any], needle: str) -> None:
    job_id = submit(raw=True, **sections)
    run_job(job_id, store, artifacts, settings)
    job = store.get_job(job_id)
    assert job is not None and job.status == "failed" and needle in (job.error or "")
    assert "\n" not in (job.error or "")


def test_a_diverging_loss_fails_the_job(submit: Submit, store: JobStore,
                                        artifacts: ArtifactStore, settings: Settings,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    cross_entropy = objectives.F.cross_entropy

    def diverging(*args: Any, **kwargs: Any) -> torch.Tensor:
        return cross_entropy(*args, **kwargs) * float("inf")

    monkeypatch.setattr(objectives.F, "cross_entropy", diverging)
    job_id = submit()
    run_job(job_id, store, artifacts, settings)
    job = store.get_job(job_id)
    assert job is not None and job.status == "failed"
    assert job.error is not None and "training diverged" in job.error


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_requested_without_a_gpu_fails_clearly(submit: Submit, store: JobStore,
                                                    artifacts: ArtifactStore,
                                                    settings: Settings) -> None:
    job_id = submit(training={"device": "cuda"})
    run_job(job_id, store, artifacts, settings)
    job = store.get_job(job_id)
    assert job is not None and job.status == "failed"
    assert job.error is not None and "no CUDA device" in job.error


def test_cancel_stops_a_running_job(submit: Submit, store: JobStore,
                                    artifacts: ArtifactStore, settings: Settings,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    job_id = submit(training={"epochs": 50})
    told = threading.Event()  # a heartbeat has answered "stop"
    heartbeat = store.heartbeat

    def spy(*args: Any, **kw: Any) -> bool:
        stop = heartbeat(*args, **kw)
        if stop:
            told.set()
        return stop

    monkeypatch.setattr(store, "heartbeat", spy)

    def cancel_at_step_3(step: int) -> None:
        if step == 3:  # a cancel arrives mid-job; the step ends once the worker has heard it
            store.request_cancel(job_id)
            assert told.wait(60), "no heartbeat answered stop"

    on_steps(monkeypatch, cancel_at_step_3)
    run_job(job_id, store, artifacts, settings)
    job = store.get_job(job_id)
    assert job is not None and job.status == "cancelled" and job.finished_at is not None
    assert job.progress["step"] < job.progress["total_steps"]  # stopped, not run to the end
    assert not artifacts.exists(job_id, "model.safetensors")


class Crash(BaseException):
    """Stands for the worker process dying (not an Exception: run_job must not handle it)."""


def test_resume_after_a_crash_gives_the_uninterrupted_weights(
    submit: Submit, store: JobStore, artifacts: ArtifactStore, settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sections = {"training": {"epochs": 2, "checkpoint_every": 5}}
    reference = submit(**sections)
    run_job(reference, store, artifacts, settings)
    expected = load_file(str(artifact_file(artifacts, reference, "model.safetensors")))

    job_id = submit(**sections)
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
    assert saved == [5, 10] and store.get_job(job_id).status == "running"  # type: ignore
    # The reaper's view: no heartbeat for long; back to the queue, another worker takes it.
    with store.session() as s:
        s.execute(update(Job).where(Job.id == job_id)
                  .values(heartbeat_at=utcnow() - timedelta(seconds=600)))
    stale = store.stale_jobs(settings.heartbeat_timeout_s)[0]
    assert store.requeue(job_id, stale.heartbeat_at)
    run_job(job_id, store, artifacts, settings)
    job = store.get_job(job_id)
    assert job is not None and job.status == "succeeded" and job.attempts == 2
    assert job.resumed_from_step == 10
    report = json.loads(artifacts.read_bytes(job_id, "report.json"))
    assert report["training"]["resumed_from_step"] == 10 and len(report["curve"]) == 2
    got = load_file(str(artifact_file(artifacts, job_id, "model.safetensors")))
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name  # bit for bit


def test_uploaded_data_and_initial_weights(submit: Submit, store: JobStore,
                                           artifacts: ArtifactStore, settings: Settings,
                                           tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    uploads = UploadStore(artifacts.storage)
    buffer = io.BytesIO()
    np.savez(buffer, x=x, y=y)
    with uploads.writer("data1") as w:
        w.write(buffer.getvalue())
    store.create_upload("t1", "d.npz", "npz", 1, "0" * 64, {}, upload_id="data1")
    model = build_model("mlp", {"hidden": [8]}, (6,), 2)
    with uploads.writer("w1") as w:
        w.write(save(model.state_dict()))
    store.create_upload("t1", "w.safetensors", "safetensors", 1, "0" * 64, {}, upload_id="w1")
    spec = {**TINY, "model": {"arch": "mlp", "kwargs": {"hidden": [8]}, "weights": "w1"},
            "data": {"dataset": "upload", "upload": "data1"}}
    job_id = submit(spec)
    run_job(job_id, store, artifacts, settings)
    job = store.get_job(job_id)
    assert job is not None and job.status == "succeeded", job.error if job else None
    accuracy = json.loads(artifacts.read_bytes(job_id, "report.json"))["accuracy"]
    assert accuracy["dense"] == accuracy["initial"] is not None
    assert "initial weights" in accuracy["dense_source"]
    other = submit(spec, tenant="t2")  # another tenant's uploads are not found
    run_job(other, store, artifacts, settings)
    assert "not found" in (store.get_job(other).error or "")  # type: ignore[union-attr]


def test_a_built_model_over_the_queue_s_limit_fails_before_training(
    submit: Submit, store: JobStore, artifacts: ArtifactStore, settings: Settings
) -> None:
    # What submit cannot estimate (a plugin, a Hugging Face model) the worker checks once built.
    limited = settings.model_copy(update={"max_job_params": "cpu:1000"})
    job_id = submit(TINY)
    run_job(job_id, store, artifacts, limited)
    job = store.get_job(job_id)
    assert job.status == "failed"
    assert "refused before training" in job.error and "SPARTAN_MAX_JOB_PARAMS" in job.error
    assert job.progress.get("step", 0) == 0


def test_statistics_summed_in_place_equal_the_per_step_rows() -> None:
    """A single-process loop adds each batch's statistics to its device-side sums in place;
    the sums (and so every metrics record) are exactly those of the per-batch rows the
    multi-rank loop all-reduces, the empty share of a last global batch included."""
    gen = torch.Generator().manual_seed(0)
    cases = {
        "classification": lambda n: (torch.randn(n, 5, generator=gen),
                                     torch.randint(0, 5, (n,), generator=gen)),
        "regression": lambda n: (torch.randn(n, 1, generator=gen), torch.randn(n, generator=gen)),
        "causal_lm": lambda n: (torch.randn(n, 6, 7, generator=gen),
                                torch.randint(0, 7, (n, 6), generator=gen)),
    }
    for name, batch in cases.items():
        task = objectives.make_task(name)
        loop = training.Loop.__new__(training.Loop)
        loop.task, loop._sums = task, None
        expected = None
        for n in (8, 3, 0, 5):
            out, target = batch(n)
            loss = task.loss(out, target) if n else out.sum() * 0.0
            loop.accumulate(out, target, loss)
            row = loop.row(out, target, loss)
            expected = row if expected is None else expected + row
        assert loop._sums is not None and expected is not None
        assert torch.equal(loop._sums, expected), name
