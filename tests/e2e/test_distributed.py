"""The distributed setup end to end: Redis broker, PostgreSQL store, `spartan serve --workers 0`
and two separate worker processes.

Uses Redis and PostgreSQL on 127.0.0.1 (SPARTAN_TEST_REDIS_URL, SPARTAN_TEST_POSTGRES_URL), a
Redis database of its own (flushed) and a PostgreSQL database created for the run and dropped
after. Without them the test skips, except under CI=true, where it fails.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import REPO, Serve, base_env, stop_process, wait_for

pytestmark = pytest.mark.distributed

REDIS_URL = os.environ.get("SPARTAN_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
POSTGRES_URL = os.environ.get("SPARTAN_TEST_POSTGRES_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/test")
SPEC = {"model": {"arch": "mlp", "kwargs": {"hidden": [64]}}, "data": {"dataset": "digits"},
        "sparsity": {"method": "spartan", "budget": 0.2}, "training": {"epochs": 3}}


def unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the distributed path must be tested)")
    pytest.skip(reason)


@contextlib.contextmanager
def real_backends(redis_url: str = REDIS_URL) -> Iterator[tuple[str, str]]:
    """(Redis URL, PostgreSQL URL): the Redis database flushed before and after, a PostgreSQL
    database created for the caller and dropped after; skips (fails under CI=true) without them."""
    import psycopg
    import redis

    try:
        broker = redis.Redis.from_url(redis_url, socket_connect_timeout=2)
        broker.ping()
    except redis.RedisError as exc:
        unavailable(f"Redis at {redis_url} is unreachable: {exc}")
    broker.flushdb()
    admin_url = POSTGRES_URL.replace("+psycopg", "")
    name = f"spartan_test_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        unavailable(f"PostgreSQL at {admin_url} is unreachable: {exc}")
    try:
        yield redis_url, re.sub(r"/[^/]*$", f"/{name}", POSTGRES_URL)
    finally:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        broker.flushdb()
        broker.close()


@pytest.fixture
def backends() -> Iterator[tuple[str, str]]:
    with real_backends() as urls:
        yield urls


def start_worker(env: dict[str, str], name: str, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "spartan_service.worker", "--queues", "cpu", "--concurrency", "1",
         "--hostname", f"{name}@%h"],
        cwd=REPO, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def wait_ready(proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while " ready." not in log.read_text(errors="replace"):
        assert proc.poll() is None, f"worker exited: {log.read_text()}"
        assert time.monotonic() < deadline, f"worker not ready: {log.read_text()}"
        time.sleep(0.2)


def test_two_jobs_run_on_two_workers(backends: tuple[str, str], tmp_path: Path) -> None:
    broker_url, database_url = backends
    env = base_env(tmp_path / "data", SPARTAN_BROKER_URL=broker_url,
                   SPARTAN_DATABASE_URL=database_url, SPARTAN_WORKER_THREADS="1")
    serve = Serve(env, tmp_path, workers=0)
    workers: list[subprocess.Popen[bytes]] = []
    try:
        client = serve.start()  # migrates the fresh database before the workers start
        logs = [tmp_path / f"worker-{i}.txt" for i in (1, 2)]
        workers = [start_worker(env, f"w{i}", log) for i, log in zip((1, 2), logs, strict=True)]
        for proc, log in zip(workers, logs, strict=True):
            wait_ready(proc, log)
        ids = [client.submit({**SPEC, "name": f"distributed {i}"})["id"] for i in (1, 2)]
        jobs = [wait_for(client, job_id, timeout=120) for job_id in ids]
        assert [j["status"] for j in jobs] == ["succeeded", "succeeded"], jobs
        names = {j["worker"].split("/")[0] for j in jobs}
        assert len(names) == 2 and all(n.startswith(("w1@", "w2@")) for n in names), names
        for job in jobs:
            assert {a["name"] for a in client.artifacts(job["id"])} >= {"model.safetensors",
                                                                         "report.json"}
        # The job store is PostgreSQL: the API lists what the workers wrote there.
        assert client.request("GET", "/v1/jobs", params={"status": "succeeded"})["count"] == 2
    finally:
        serve.stop()
        for proc in workers:
            stop_process(proc)
