"""Real worker processes (`python -m spartan_service.worker`) on the embedded filesystem broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spartan_service.jobs.queue import enqueue_job, make_celery
from spartan_service.jobs.settings import Settings
from spartan_service.jobs.spec import JobSpec
from spartan_service.jobs.store import JobStore
from tests.worker.conftest import TINY, merged

ROOT = Path(__file__).resolve().parents[2]


class Workers:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, queues: str = "cpu", **env: str) -> subprocess.Popen[bytes]:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("SPARTAN_")}
        environ.update(SPARTAN_DATA_DIR=str(self.data_dir), SPARTAN_WORKER_THREADS="1",
                       SPARTAN_PROGRESS_INTERVAL_S="0.2", **env)
        log = (self.data_dir / f"worker{len(self.procs)}.log").open("wb")
        proc = subprocess.Popen([sys.executable, "-m", "spartan_service.worker",
                                 "--queues", queues], cwd=ROOT,
                                env=environ, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        # SIGKILL: quicker still than a warm shutdown (about 1 s); the job processes die with
        # their worker (PR_SET_PDEATHSIG).
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:]
                         for p in sorted(self.data_dir.glob("worker*.log")))


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    w = Workers(tmp_path)
    yield w
    w.stop()


def submit(store: JobStore, settings: Settings, queue: str, **sections: Any) -> str:
    spec = JobSpec.model_validate(merged(TINY, **sections)).model_dump(mode="json")
    job_id = store.create_job("t1", spec, queue, None).id
    enqueue_job(job_id, queue, app=make_celery(settings))
    return job_id


def wait_for(store: JobStore, job_id: str, done: Any, timeout: float, workers: Workers) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = store.get_job(job_id)
        if job is not None and done(job):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} timed out: {store.get_job(job_id).__dict__}\n"
                         f"{workers.logs()}")


def test_worker_process_runs_enqueued_jobs_from_both_queues(tmp_path: Path,
                                                            workers: Workers) -> None:
    settings = Settings(data_dir=tmp_path, database_url=None, broker_url=None)
    store = JobStore(settings.db_url)
    cpu_job = submit(store, settings, "cpu")
    gpu_queue_job = submit(store, settings, "gpu")  # the gpu queue reaches a worker serving it
    workers.start(queues="cpu,gpu")
    for job_id in (cpu_job, gpu_queue_job):
        job = wait_for(store, job_id, lambda j: j.status in ("succeeded", "failed"), 120, workers)
        assert job.status == "succeeded", (job.error, workers.logs())
        assert job.worker.startswith("celery@")
    store.close()


def test_back_to_back_jobs_run_in_fresh_processes(tmp_path: Path, workers: Workers) -> None:
    """Each job in its own process, in order, and a clean exit on SIGTERM. The gaps between
    jobs and the time to exit are measured by `python -m benchmarks.job_latency`."""
    settings = Settings(data_dir=tmp_path, database_url=None, broker_url=None)
    store = JobStore(settings.db_url)
    proc = workers.start()
    deadline = time.monotonic() + 120
    while b" ready." not in (tmp_path / "worker0.log").read_bytes():
        assert proc.poll() is None and time.monotonic() < deadline, workers.logs()
        time.sleep(0.1)
    small = {"model": {"arch": "mlp", "kwargs": {"hidden": [8]}}, "sparsity": {"method": "dense"}}
    ids = [submit(store, settings, "cpu", **small) for _ in range(3)]
    jobs = [wait_for(store, i, lambda j: j.status in ("succeeded", "failed"), 120, workers)
            for i in ids]
    assert all(j.status == "succeeded" for j in jobs), [j.error for j in jobs]
    assert len({j.worker.split("/")[1] for j in jobs}) == 3  # a fresh process per job
    jobs.sort(key=lambda j: j.started_at)
    assert all(a.finished_at <= b.started_at for a, b in zip(jobs, jobs[1:], strict=False))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, workers.logs()
    store.close()


@pytest.mark.slow
def test_a_killed_worker_s_job_resumes_on_another_worker(tmp_path: Path,
                                                         workers: Workers) -> None:
    settings = Settings(data_dir=tmp_path, database_url=None, broker_url=None)
    store = JobStore(settings.db_url)
    job_id = submit(store, settings, "cpu", training={"epochs": 60, "checkpoint_every": 40})
    first = workers.start(SPARTAN_HEARTBEAT_TIMEOUT_S="3")
    wait_for(store, job_id, lambda j: (j.progress.get("step") or 0) > 100, 120, workers)
    first.send_signal(signal.SIGKILL)  # the job's child process dies with it
    first.wait()
    workers.start(SPARTAN_HEARTBEAT_TIMEOUT_S="3")
    job = wait_for(store, job_id, lambda j: j.attempts == 2 and j.resumed_from_step, 120,
                   workers)
    step = job.resumed_from_step
    assert step >= 40 and (step % 40 == 0 or step % 23 == 0)  # a checkpoint or an epoch end
    job = wait_for(store, job_id, lambda j: j.status != "running", 120, workers)
    assert job.status == "succeeded" and job.attempts == 2, job.error
    store.close()
