"""Experiment tracking from the worker: TensorBoard event files beside metrics.jsonl, read back
with TensorBoard's own reader; an MLflow run on a real MLflow tracking server started here,
read back with MLflow's client. Each part skips, saying why, when its extra is missing."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from spartan_service.jobs.artifacts import ArtifactStore
from spartan_service.jobs.settings import Settings
from spartan_service.jobs.store import JobStore
from spartan_service.worker.runner import run_job
from tests.files import artifact_file, artifacts_root
from tests.ports import BIND_RETRIES, address_in_use, refusing_port, unused_port
from tests.worker.conftest import TINY, Submit, merged


def need(module: str, extra: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (pip install 'spartan-service[{extra}]')")


def step_records(artifacts: ArtifactStore, job_id: str) -> list[dict[str, Any]]:
    lines = artifacts.read_bytes(job_id, "metrics.jsonl").decode().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "step"]


def test_tensorboard_event_files_beside_metrics(submit: Submit, store: JobStore,
                                                artifacts: ArtifactStore,
                                                settings: Settings) -> None:
    need("tensorboard", "tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    job_id = submit(training={"tensorboard": True})
    run_job(job_id, store, artifacts, settings)
    job = store.get_job(job_id)
    assert job is not None and job.status == "succeeded", job.error if job else None
    names = [a["name"] for a in artifacts.list(job_id)]
    assert any(n.startswith("events.out.tfevents.") for n in names), names
    events = EventAccumulator(str(artifact_file(artifacts, job_id)))
    events.Reload()
    steps = step_records(artifacts, job_id)
    loss = events.Scalars("step/loss")
    assert [e.step for e in loss] == [r["step"] for r in steps]
    assert [round(e.value, 5) for e in loss] == [round(r["loss"], 5) for r in steps]
    assert {"step/beta", "step/budget_fraction", "epoch/val_accuracy",
            "final/accuracy"} <= set(events.Tags()["scalars"])
    report = json.loads(artifacts.read_bytes(job_id, "report.json"))
    assert events.Scalars("final/accuracy")[0].value == pytest.approx(
        report["accuracy"]["sparse"], rel=1e-6)


def test_without_tensorboard_the_job_says_so_and_succeeds(
        submit: Submit, store: JobStore, artifacts: ArtifactStore, settings: Settings,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    job_id = submit(training={"tensorboard": True})
    run_job(job_id, store, artifacts, settings)
    job = store.get_job(job_id)
    assert job is not None and job.status == "succeeded"
    rows, _ = store.job_logs(job_id)
    assert any(r.level == "WARNING" and "no tensorboard package" in r.message for r in rows)
    assert not any(a["name"].startswith("events.") for a in artifacts.list(job_id))


def start_mlflow(mlflow: str, root: Path) -> tuple[str, subprocess.Popen[bytes]]:
    """(URL, process) of a healthy mlflow server; it binds the port it is told (tests/ports.py),
    so a port taken meanwhile is replaced by another."""
    for attempt in range(1, BIND_RETRIES + 1):
        port = unused_port()
        url = f"http://127.0.0.1:{port}"
        log_path = root / f"server-{attempt}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [mlflow, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                 "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                 "--artifacts-destination", str(root / "artifacts")],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 180  # a loaded machine: migrations, then the app
        while proc.poll() is None and time.monotonic() < deadline:
            if healthy(url):
                return url, proc
            time.sleep(0.5)
        stop_group(proc)
        said = log_path.read_text()
        if attempt == BIND_RETRIES or not address_in_use(said):
            raise RuntimeError(f"mlflow server did not start:\n{said[-3000:]}")
    raise AssertionError("unreachable")


def healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    need("mlflow", "mlflow")
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent))
    if mlflow is None:
        pytest.skip("the mlflow command is not installed beside this Python")
    url, proc = start_mlflow(mlflow, tmp_path_factory.mktemp("mlflow"))
    try:
        yield url
    finally:
        stop_group(proc)


@pytest.mark.slow
def test_mlflow_run_read_back_from_the_server(mlflow_server: str, submit: Submit,
                                              store: JobStore, artifacts: ArtifactStore,
                                              settings: Settings) -> None:
    from mlflow.tracking import MlflowClient

    tracked = settings.model_copy(update={"mlflow_tracking_uri": mlflow_server,
                                          "mlflow_experiment": "spartan-test"})
    job_id = submit(merged(TINY, sparsity={"budget": 0.3}))
    run_job(job_id, store, artifacts, tracked)
    job = store.get_job(job_id)
    assert job is not None and job.status == "succeeded", job.error if job else None

    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("spartan-test")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id],
                              filter_string=f"tags.`spartan.job_id` = '{job_id}'")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["sparsity.budget"] == "0.3"
    assert run.data.params["model.arch"] == "mlp"
    steps = step_records(artifacts, job_id)
    history = client.get_metric_history(run.info.run_id, "step_loss")
    assert sorted(m.step for m in history) == [r["step"] for r in steps]
    report = json.loads(artifacts.read_bytes(job_id, "report.json"))
    assert run.data.metrics["final_accuracy"] == pytest.approx(report["accuracy"]["sparse"])
    assert run.data.metrics["final_measured_latency"] == pytest.approx(
        report["latency"]["sparse_measured"])
    stored = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.json", "model.sparse.safetensors", "metrics.jsonl"} <= stored
    got = Path(client.download_artifacts(run.info.run_id, "report.json",
                                         str(artifacts_root(artifacts).parent / "dl")))
    assert json.loads(got.read_text())["job_id"] == job_id


def test_an_unreachable_mlflow_is_a_warning_not_a_failure(
        submit: Submit, store: JobStore, artifacts: ArtifactStore, settings: Settings) -> None:
    need("mlflow", "mlflow")
    with refusing_port() as port:
        tracked = settings.model_copy(update={"mlflow_tracking_uri": f"http://127.0.0.1:{port}"})
        job_id = submit()
        run_job(job_id, store, artifacts, tracked)
    job = store.get_job(job_id)
    assert job is not None and job.status == "succeeded"
    rows, _ = store.job_logs(job_id)
    assert any(r.level == "WARNING" and "MLflow tracking" in r.message for r in rows)
