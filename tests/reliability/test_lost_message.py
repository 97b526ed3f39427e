"""A queued job whose broker message was lost (a Redis restarted without persistence, a deleted
queue file) is re-enqueued by the reaper and runs; one whose message is still there is left
alone, and a duplicate message never runs a job twice.

The fast tests use the embedded default (SQLite, filesystem queue) and run jobs in-process with
worker.runner.run_job, as the Celery task would. The Redis + PostgreSQL test skips without the
servers, except under CI=true, where it fails.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from celery import Celery
from sqlalchemy import update

from spartan_service.jobs.artifacts import ArtifactStore
from spartan_service.jobs.models import Job, utcnow
from spartan_service.jobs.queue import enqueue_job, make_celery, waiting_job_ids
from spartan_service.jobs.settings import Settings
from spartan_service.jobs.spec import JobSpec
from spartan_service.jobs.store import JobStore
from spartan_service.worker.runner import run_job
from spartan_service.worker.tasks import reap
from tests.e2e.test_distributed import REDIS_URL, real_backends
from tests.files import artifact_file
from tests.worker.conftest import TINY

AFTER_S = 60.0  # requeue_queued_after_s in these tests


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        data_dir=data_dir, database_url=None, broker_url=None, api_tokens=None,
        progress_interval_s=0.05, heartbeat_timeout_s=60, max_attempts=3,
        requeue_queued_after_s=AFTER_S)
    return Settings(**{**values, **overrides})


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def store(settings: Settings) -> Iterator[JobStore]:
    s = JobStore(settings.db_url)
    yield s
    s.close()


@pytest.fixture
def app(settings: Settings) -> Celery:
    return make_celery(settings)


def submit(store: JobStore, app: Celery) -> str:
    """As the API does: store the job, then send its message."""
    spec = JobSpec.model_validate(TINY).model_dump(mode="json")
    job_id = store.create_job("t", spec, "cpu", "lost message").id
    enqueue_job(job_id, "cpu", app=app)
    return job_id


def age(store: JobStore, job_id: str, seconds: float) -> None:
    """Pretend the job was queued `seconds` ago."""
    with store.session() as s:
        s.execute(update(Job).where(Job.id == job_id)
                  .values(updated_at=utcnow() - timedelta(seconds=seconds)))


def message_files(settings: Settings) -> list[Path]:
    return sorted((settings.broker_dir / "queue").glob("*.cpu.msg"))


def take(app: Celery) -> str | None:
    """What a worker does first: take the next message; returns its job id."""
    with app.connection_for_read() as conn:
        message = conn.default_channel.basic_get("cpu", no_ack=True)
        if message is None:
            return None
        args, _kwargs, _embed = message.decode()
        return str(args[0])


def test_lost_message_is_reenqueued_and_the_job_completes(
        store: JobStore, settings: Settings, app: Celery) -> None:
    job_id = submit(store, app)
    assert waiting_job_ids(app) == {job_id}
    age(store, job_id, AFTER_S + 5)
    assert reap(store, settings, app=app) == []  # its message is there: it waits its turn
    assert len(message_files(settings)) == 1

    for path in message_files(settings):  # the message is lost
        path.unlink()
    assert waiting_job_ids(app) == set()
    assert reap(store, settings, app=app) == [job_id]
    assert waiting_job_ids(app) == {job_id}
    job = store.get_job(job_id)
    assert job is not None and job.status == "queued" and job.attempts == 0
    assert len(job.warnings) == 1 and "re-enqueued after" in job.warnings[0], job.warnings
    assert (utcnow() - job.updated_at).total_seconds() < 5  # waits afresh
    assert reap(store, settings, app=app) == []  # once

    taken = take(app)
    assert taken == job_id and take(app) is None
    run_job(taken, store, ArtifactStore(settings.artifacts_dir), settings, worker="w1")
    job = store.get_job(job_id)
    assert job is not None
    assert job.status == "succeeded" and job.attempts == 1, job.error
    assert ArtifactStore(settings.artifacts_dir).exists(job_id, "report.json")


def test_a_job_with_its_message_is_not_run_twice(
        store: JobStore, settings: Settings, app: Celery) -> None:
    job_id = submit(store, app)
    age(store, job_id, AFTER_S + 5)
    assert reap(store, settings, app=app) == []
    enqueue_job(job_id, "cpu", app=app)  # a duplicate (say, two reapers raced)
    assert len(message_files(settings)) == 2

    artifacts = ArtifactStore(settings.artifacts_dir)
    first, second = take(app), take(app)
    assert first == second == job_id
    # The second delivery while the first runs (live heartbeat) is dropped by the claim...
    running = store.claim_job(job_id, "w1", settings.max_attempts,
                              stale_after_s=settings.heartbeat_timeout_s)
    assert running is not None and running.attempts == 1
    run_job(second, store, artifacts, settings, worker="w2")
    job = store.get_job(job_id)
    assert job is not None and job.status == "running" and job.worker == "w1"
    assert job.attempts == 1
    # ... and so is one after it finished.
    assert store.finish_job(job_id, "succeeded", worker="w1")
    finished = store.get_job(job_id)
    run_job(first, store, artifacts, settings, worker="w3")
    job = store.get_job(job_id)
    assert job is not None and finished is not None
    assert job.status == "succeeded" and job.attempts == 1 and job.worker == "w1"
    assert job.finished_at == finished.finished_at
    assert not artifact_file(artifacts, job_id, "report.json").exists()  # w2, w3 trained nothing


def test_reaper_leaves_queued_jobs_alone_when_the_broker_is_unreadable(
        store: JobStore, settings: Settings, app: Celery) -> None:
    job_id = submit(store, app)
    for path in message_files(settings):
        path.unlink()
    age(store, job_id, AFTER_S + 5)

    class Down:
        def connection_for_read(self) -> Any:
            raise ConnectionError("broker down")

    assert reap(store, settings, app=Down()) == []  # type: ignore[arg-type]
    job = store.get_job(job_id)
    assert job is not None and job.status == "queued" and job.warnings == []
    assert reap(store, settings, app=app) == [job_id]  # a later round, broker back


@pytest.fixture
def redis_and_postgres(tmp_path: Path) -> Iterator[Settings]:
    """Settings on a Redis database of this module's own (flushed; db 14 beside the e2e tests'
    13) and a PostgreSQL database created for the test and dropped after."""
    with real_backends(re.sub(r"/\d*$", "/14", REDIS_URL)) as (broker_url, database_url):
        yield make_settings(tmp_path, broker_url=broker_url, database_url=database_url)


@pytest.mark.distributed
def test_redis_restart_without_persistence_loses_nothing(
        redis_and_postgres: Settings) -> None:
    import redis

    settings = redis_and_postgres
    app, store = make_celery(settings), JobStore(settings.db_url)
    try:
        waiting, delivered = submit(store, app), submit(store, app)
        with app.connection_for_read() as conn:  # a worker took one and has not acked it yet
            message = conn.default_channel.basic_get("cpu", no_ack=False)
            assert message is not None and message.decode()[0] == [waiting]
            assert waiting_job_ids(app) == {waiting, delivered}
        for job_id in (waiting, delivered):
            age(store, job_id, AFTER_S + 5)
        assert reap(store, settings, app=app) == []

        redis.Redis.from_url(settings.broker).flushdb()  # restarted empty
        assert sorted(reap(store, settings, app=app)) == sorted([waiting, delivered])
        assert waiting_job_ids(app) == {waiting, delivered}
        assert reap(store, settings, app=app) == []
        for job_id in (waiting, delivered):
            job = store.get_job(job_id)
            assert job is not None and job.status == "queued" and len(job.warnings) == 1
    finally:
        store.close()


def test_of_two_reapers_one_records_the_reenqueue(store: JobStore, app: Celery) -> None:
    job_id = submit(store, app)
    age(store, job_id, AFTER_S + 5)
    seen = store.waiting_jobs(AFTER_S)
    assert [j.id for j in seen] == [job_id]
    since = seen[0].updated_at
    assert store.note_reenqueued(job_id, since, "first")
    assert not store.note_reenqueued(job_id, since, "second")  # raced: already recorded
    assert store.waiting_jobs(AFTER_S) == []
    assert store.get_job(job_id).warnings == ["first"]  # type: ignore[union-attr]
    claimed = store.claim_job(job_id, "w", 3)
    assert claimed is not None
    assert not store.note_reenqueued(job_id, claimed.updated_at, "late")  # running now
