"""Profile jobs in-process: the worker times the model on its own hardware, fits a cost model
per batch size, records the hardware, and holds its device alone."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
import torch

from spartan_service.costmodels import hardware
from spartan_service.jobs.artifacts import ArtifactStore
from spartan_service.jobs.profile_spec import ProfileSpec
from spartan_service.jobs.settings import Settings
from spartan_service.jobs.store import JobStore
from spartan_service.worker.device_lock import hold_device
from spartan_service.worker.runner import run_job

PROFILE: dict[str, Any] = {"name": "tiny-cpu", "model": {"arch": "mlp", "kwargs": {"hidden": [32]}},
                           "data": {"dataset": "digits"}, "quick": True, "batch_sizes": [16],
                           "kernels": ["dense", "csr"]}


def submit_profile(store: JobStore, tenant: str = "t1", **overrides: Any) -> str:
    spec = ProfileSpec.model_validate({**PROFILE, **overrides}).model_dump(mode="json")
    return store.create_job(tenant, spec, "cpu", spec["name"], kind="profile").id


def test_profile_job_fits_and_stores_a_cost_model_with_this_hardware(
        store: JobStore, artifacts: ArtifactStore, settings: Settings) -> None:
    job_id = submit_profile(store, batch_sizes=[16, 4])
    run_job(job_id, store, artifacts, settings)
    job = store.get_job(job_id)
    assert job is not None and job.status == "succeeded", job.error if job else None
    assert job.kind == "profile" and job.attempts == 1
    assert job.progress["step"] == job.progress["total_steps"] == 2
    rows = store.profile_job_cost_models(job_id)
    assert [r.batch for r in rows] == [16, 4]
    assert [r.version for r in rows] == [1, 2]  # both versions of "tiny-cpu"
    assert job.metrics["cost_model_id"] == rows[0].id
    here = hardware.collect("cpu")
    for row in rows:
        assert row.tenant == "t1" and row.name == "tiny-cpu" and row.source == "profile"
        assert set(row.data["layers"]) == {"layers.0", "head"}
        assert row.data["batch"] == row.batch
        hw = row.hardware
        assert hw is not None
        # The worker's own machine: CPU model, cores, torch threads and version, no GPU.
        assert hw["device"] == "cpu" and hw["cpu"] == here["cpu"] and hw["gpu"] is None
        assert hw["cores"] == here["cores"] and hw["threads"] == torch.get_num_threads()
        assert hw["torch"] == torch.__version__.split("+")[0]
        assert set(hw["kernels"]) <= {"dense", "csr"} and hw["kernels"]
        assert hw["kernels"] == sorted({lay["kernel"] for lay in row.data["layers"].values()})
        assert row.fingerprint == hardware.fingerprint(here)
        assert row.data["hardware"] == hw and row.profile is not None
        raw = json.loads(artifacts.read_bytes(job_id, f"profile-b{row.batch}.json"))
        assert raw["machine"]["batch"] == row.batch
        assert [lay["name"] for lay in raw["layers"]] == ["layers.0", "head"]


def test_channels_profile_job_fits_a_structured_cost_model(
        store: JobStore, artifacts: ArtifactStore, settings: Settings) -> None:
    job_id = submit_profile(store, structure="channels", kernels=["auto"],
                            widths=[0.25, 0.5, 1.0], batch_sizes=[8])
    run_job(job_id, store, artifacts, settings)
    job = store.get_job(job_id)
    assert job is not None and job.status == "succeeded", job.error if job else None
    (row,) = store.profile_job_cost_models(job_id)
    assert row.data["structure"] == "channels" and set(row.data["layers"]) >= {"layers.0"}
    assert row.hardware is not None and row.hardware["kernels"] == ["dense"]
    assert row.fingerprint == hardware.fingerprint(hardware.collect("cpu"))


def test_a_retry_keeps_the_batch_sizes_already_profiled(
        store: JobStore, artifacts: ArtifactStore, settings: Settings) -> None:
    job_id = submit_profile(store)
    run_job(job_id, store, artifacts, settings)
    first = store.profile_job_cost_models(job_id)
    # As if the worker had been lost after storing the cost model: run it again.
    from sqlalchemy import update

    from spartan_service.jobs.models import Job

    with store.session() as s:
        s.execute(update(Job).where(Job.id == job_id).values(status="queued"))
    run_job(job_id, store, artifacts, settings)
    assert [r.id for r in store.profile_job_cost_models(job_id)] == [r.id for r in first]
    job = store.get_job(job_id)
    assert job is not None and job.status == "succeeded" and job.attempts == 2


@pytest.mark.parametrize(("overrides", "message"), [
    ({"model": {"arch": "mlp", "kwargs": {"hidden": [32]}, "weights": "nope"}},
     "upload 'nope' not found"),
    ({"device": "cuda"}, "no CUDA device"),
])
def test_profile_job_failures_are_recorded(store: JobStore, artifacts: ArtifactStore,
                                           settings: Settings, overrides: dict[str, Any],
                                           message: str) -> None:
    if overrides.get("device") == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    job_id = submit_profile(store, **overrides)
    run_job(job_id, store, artifacts, settings)
    job = store.get_job(job_id)
    assert job is not None and job.status == "failed"
    assert job.error is not None and message in job.error
    assert store.profile_job_cost_models(job_id) == []


def test_profile_waits_for_training_on_its_device(
        store: JobStore, artifacts: ArtifactStore, settings: Settings) -> None:
    """A training job holds the device shared: the profile waits (saying so in its progress)
    and starts only once the device is free."""
    job_id = submit_profile(store)
    release = threading.Event()
    held = threading.Event()

    def training() -> None:
        with hold_device(settings.locks_dir, "cpu", exclusive=False):
            held.set()
            release.wait(30)

    trainer = threading.Thread(target=training)
    trainer.start()
    held.wait(10)
    runner = threading.Thread(target=run_job, args=(job_id, store, artifacts, settings))
    runner.start()
    try:
        for _ in range(300):
            job = store.get_job(job_id)
            assert job is not None
            if job.progress.get("phase") == "waiting for the device":
                break
            threading.Event().wait(0.05)
        assert job.progress.get("phase") == "waiting for the device", job.progress
        assert job.status == "running" and store.profile_job_cost_models(job_id) == []
    finally:
        release.set()
        trainer.join(10)
        runner.join(120)
    job = store.get_job(job_id)
    assert job is not None and job.status == "succeeded", job.error


def test_exclusive_holder_keeps_new_shared_holders_out(settings: Settings) -> None:
    """Writer preference: with a profile waiting, a training job arriving later waits too."""
    order: list[str] = []
    first_in, profile_waiting = threading.Event(), threading.Event()
    release_first = threading.Event()

    def first_training() -> None:
        with hold_device(settings.locks_dir, "cpu", exclusive=False):
            first_in.set()
            release_first.wait(30)
            order.append("training 1 done")

    def profile() -> None:
        with hold_device(settings.locks_dir, "cpu", exclusive=True,
                         on_wait=profile_waiting.set):
            order.append("profile")

    def second_training() -> None:
        with hold_device(settings.locks_dir, "cpu", exclusive=False):
            order.append("training 2")

    threads = [threading.Thread(target=first_training)]
    threads[0].start()
    first_in.wait(10)
    threads.append(threading.Thread(target=profile))
    threads[1].start()
    profile_waiting.wait(10)
    threads.append(threading.Thread(target=second_training))
    threads[2].start()
    release_first.set()
    for t in threads:
        t.join(30)
    assert order == ["training 1 done", "profile", "training 2"]


def test_a_lost_profile_worker_is_recovered_like_a_training_job(
        store: JobStore, artifacts: ArtifactStore, settings: Settings) -> None:
    """Profiles are jobs: the reaper requeues one whose worker stopped heartbeating, and the
    next worker runs it to the end (the heartbeat, attempts and reaper are the jobs')."""
    from datetime import timedelta

    from sqlalchemy import update

    from spartan_service.jobs.models import Job, utcnow
    from spartan_service.worker.tasks import reap
    from tests.worker.test_tasks import FakeApp

    job_id = submit_profile(store)
    assert store.claim_job(job_id, "lost-worker", settings.max_attempts) is not None
    with store.session() as s:
        s.execute(update(Job).where(Job.id == job_id).values(
            heartbeat_at=utcnow() - timedelta(seconds=settings.heartbeat_timeout_s + 5)))
    app = FakeApp()
    assert reap(store, settings, app=app) == [job_id]  # type: ignore[arg-type]
    assert app.sent == [("spartan.run_job", [job_id], "cpu")]
    run_job(job_id, store, artifacts, settings)
    job = store.get_job(job_id)
    assert job is not None and job.status == "succeeded" and job.attempts == 2
    assert len(store.profile_job_cost_models(job_id)) == 1
