"""Crash recovery on the distributed path, with real processes: Redis (a redis-server of the
test's own), PostgreSQL, `spartan serve --workers 0` and `python -m worker` processes.

- a worker SIGKILLed mid-job: another worker resumes the same job from its last checkpoint
  within seconds (heartbeat timeout plus a reaper round), one job record, no resubmission;
- a job that kills its worker every time ends failed after max_attempts, saying why;
- Redis killed and restarted (empty: no persistence) while a job runs: the job completes, and
  the workers consume new jobs from the restarted Redis.
Without redis-server or PostgreSQL these skip, except under CI=true, where they fail.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.e2e.conftest import TERMINAL, wait_for
from tests.reliability.cluster import LONG_SPEC, MAX_ATTEMPTS, Cluster

pytestmark = pytest.mark.distributed

SHORT_SPEC = {**LONG_SPEC, "training": {"epochs": 1}}


def poll(cluster: Cluster, job_id: str, done: Any, timeout: float, keep_workers: int = 0
         ) -> dict[str, Any]:
    """The job once done(job); replaces dead workers to keep `keep_workers` alive."""
    deadline = time.monotonic() + timeout
    while True:
        job = cluster.client.job(job_id)
        if done(job):
            return job
        while len(cluster.live()) < keep_workers:
            cluster.add_worker()
        assert time.monotonic() < deadline, f"timed out: {job}\n{cluster.logs()}"
        time.sleep(0.1)


def test_killed_worker_s_job_resumes_from_its_checkpoint_elsewhere(cluster: Cluster) -> None:
    client = cluster.client
    job_id = client.submit({**LONG_SPEC, "name": "killed mid-job"})["id"]
    job = wait_for(client, job_id, ("running",), timeout=60, min_step=100)
    victim = cluster.running_on(job)
    cluster.kill_worker(victim)
    # How soon it resumes is measured by benchmarks.recovery; here, that it does.
    job = poll(cluster, job_id, lambda j: j["attempts"] == 2 and j["status"] == "running",
               timeout=120)
    job = wait_for(client, job_id, timeout=120)
    assert job["status"] == "succeeded", (job, cluster.logs())
    assert job["attempts"] == 2 and cluster.running_on(job) != victim
    step = job["resumed_from_step"]
    assert step is not None and step >= 50 and (step % 50 == 0 or step % 23 == 0), step
    assert job["progress"]["step"] == job["progress"]["total_steps"]
    listed = client.request("GET", "/v1/jobs")
    assert listed["count"] == 1 and listed["data"][0]["id"] == job_id  # one record, no resubmit


def test_job_that_kills_its_worker_every_time_ends_failed(cluster: Cluster) -> None:
    client = cluster.client
    workers_before = cluster.started
    job_id = client.submit({**SHORT_SPEC, "model": {"arch": "worker_killer"}})["id"]
    job = poll(cluster, job_id, lambda j: j["status"] in TERMINAL, timeout=90, keep_workers=2)
    assert job["status"] == "failed", job
    assert job["attempts"] == MAX_ATTEMPTS
    assert f"gave up after {MAX_ATTEMPTS} attempts" in job["error"]
    assert "worker was lost each time" in job["error"]
    assert cluster.started - workers_before == MAX_ATTEMPTS  # each attempt took a worker down


def test_job_completes_across_a_redis_restart(cluster: Cluster) -> None:
    client = cluster.client
    job_id = client.submit({**LONG_SPEC, "name": "redis restarted"})["id"]
    wait_for(client, job_id, ("running",), timeout=60, min_step=10)
    lost = "Connection to broker lost"
    before = cluster.log_counts(lost)
    cluster.redis.kill()
    cluster.wait_logged(lost, before)  # every worker has seen its broker go
    cluster.redis.start()
    job = client.job(job_id)
    assert job["status"] == "running", job  # the restart happened mid-job
    job = wait_for(client, job_id, timeout=120)
    assert job["status"] == "succeeded" and job["attempts"] == 1, (job, cluster.logs())
    # The workers reconnected: a job submitted to the restarted (empty) Redis runs too.
    after = client.submit({**SHORT_SPEC, "name": "after the restart"})["id"]
    assert wait_for(client, after, timeout=60)["status"] == "succeeded"
