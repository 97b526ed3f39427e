"""Real worker processes: tenants take turns on a queue (one tenant's queued jobs do not hold
the worker until they are all done), and a job process killed by a signal is named as such in
its job's record (SIGKILL: most likely out of memory)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from spartan_service.jobs.queue import enqueue_job, make_celery
from spartan_service.jobs.settings import Settings
from spartan_service.jobs.spec import JobSpec
from spartan_service.jobs.store import JobStore
from tests.worker.conftest import TINY, merged
from tests.worker.test_celery_worker import Workers, wait_for, workers  # noqa: F401

SMALL = {"model": {"arch": "mlp", "kwargs": {"hidden": [8]}}, "sparsity": {"method": "dense"}}


def submit_as(store: JobStore, settings: Settings, tenant: str, **sections: Any) -> str:
    spec = JobSpec.model_validate(merged(TINY, **sections)).model_dump(mode="json")
    job_id = store.create_job(tenant, spec, "cpu", None).id
    enqueue_job(job_id, "cpu", app=make_celery(settings))
    return job_id


def test_a_second_tenant_runs_before_the_first_tenant_s_backlog(
    tmp_path: Path, workers: Workers,  # noqa: F811
) -> None:
    settings = Settings(data_dir=tmp_path, database_url=None, broker_url=None)
    store = JobStore(settings.db_url)
    first = [submit_as(store, settings, "a", **SMALL) for _ in range(3)]
    other = submit_as(store, settings, "b", **SMALL)  # queued last, behind a's backlog
    workers.start()
    jobs = {i: wait_for(store, i, lambda j: j.status in ("succeeded", "failed"), 180, workers)
            for i in [*first, other]}
    assert all(j.status == "succeeded" for j in jobs.values()), workers.logs()
    order = sorted(jobs, key=lambda i: jobs[i].started_at)
    assert order == [first[0], other, first[1], first[2]], order
    store.close()


def test_a_job_process_killed_by_sigkill_is_reported_as_memory(
    tmp_path: Path, workers: Workers,  # noqa: F811
) -> None:
    settings = Settings(data_dir=tmp_path, database_url=None, broker_url=None)
    store = JobStore(settings.db_url)
    job_id = submit_as(store, settings, "a", training={"epochs": 60, "checkpoint_every": 40})
    workers.start()
    job = wait_for(store, job_id, lambda j: (j.progress.get("step") or 0) > 5, 120, workers)
    child = int(job.worker.split("/")[1])  # worker.runner.worker_name: host/pid/nonce
    os.kill(child, signal.SIGKILL)  # what the kernel's OOM killer does
    job = wait_for(store, job_id, lambda j: any("killed by SIGKILL" in w for w in j.warnings),
                   60, workers)
    note = next(w for w in job.warnings if "killed by SIGKILL" in w)
    assert note.startswith("attempt 1:") and f"pid {child}" in note
    assert "most likely out of memory" in note
    store.close()
