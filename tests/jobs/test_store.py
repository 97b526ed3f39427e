"""Job store transitions, including the races between workers, reapers and cancel requests."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

from sqlalchemy import update

from spartan_service.jobs.models import Job, utcnow
from spartan_service.jobs.store import JobStore

SPEC = {"model": {"arch": "mlp"}}


def new_job(store: JobStore, tenant: str = "t1") -> str:
    return store.create_job(tenant, SPEC, "cpu", "a job", warnings=["w"]).id


def age_heartbeat(store: JobStore, job_id: str, seconds: float) -> None:
    with store.session() as s:
        s.execute(update(Job).where(Job.id == job_id)
                  .values(heartbeat_at=utcnow() - timedelta(seconds=seconds)))


def test_create_get_list_with_tenants_filters_and_pages(store: JobStore) -> None:
    ids = [new_job(store) for _ in range(3)]
    other = new_job(store, tenant="t2")
    job = store.get_job(ids[0])
    assert job is not None and job.status == "queued" and job.warnings == ["w"]
    assert store.get_job(other, tenant="t1") is None
    rows, count = store.list_jobs(tenant="t1", limit=2)
    assert count == 3 and len(rows) == 2
    rows2, _ = store.list_jobs(tenant="t1", limit=2, offset=2)
    assert {r.id for r in rows + rows2} == set(ids)
    store.claim_job(ids[0], "w1", 3)
    assert [j.id for j in store.list_jobs(status="running")[0]] == [ids[0]]


def test_claim_run_and_finish(store: JobStore) -> None:
    job_id = new_job(store)
    job = store.claim_job(job_id, "w1", max_attempts=3)
    assert job is not None and job.status == "running" and job.attempts == 1
    assert job.worker == "w1" and job.started_at is not None and job.heartbeat_at is not None
    assert store.claim_job(job_id, "w2", 3) is None  # running under a live worker
    assert store.heartbeat(job_id, {"step": 5}, worker="w1") is False
    assert store.get_job(job_id).progress == {"step": 5}  # type: ignore[union-attr]
    assert store.finish_job(job_id, "succeeded", metrics={"acc": 1.0}, worker="w1")
    assert not store.finish_job(job_id, "failed", error="late")  # final states stay final
    job = store.get_job(job_id)
    assert job is not None and job.status == "succeeded" and job.error is None
    assert job.metrics == {"acc": 1.0} and job.finished_at is not None
    assert store.claim_job(job_id, "w3", 3) is None


def test_claim_is_won_by_exactly_one_of_many_concurrent_workers(db_url: str) -> None:
    stores = [JobStore(db_url) for _ in range(8)]  # separate engines: separate connections
    job_id = new_job(stores[0])
    barrier = threading.Barrier(len(stores))
    wins: list[str] = []

    def claim(i: int) -> None:
        barrier.wait()
        if stores[i].claim_job(job_id, f"w{i}", 3) is not None:
            wins.append(f"w{i}")

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    job = stores[0].get_job(job_id)
    assert len(wins) == 1 and job is not None
    assert job.worker == wins[0] and job.attempts == 1
    for s in stores:
        s.close()


def test_a_worker_that_lost_its_job_can_neither_report_nor_finish(store: JobStore) -> None:
    job_id = new_job(store)
    store.claim_job(job_id, "old", 3)
    age_heartbeat(store, job_id, 120)
    job = store.claim_job(job_id, "new", 3, stale_after_s=60)  # takes over a stale job
    assert job is not None and job.worker == "new" and job.attempts == 2
    assert store.heartbeat(job_id, {"step": 99}, worker="old") is True  # old must stop
    assert not store.finish_job(job_id, "succeeded", worker="old")
    job = store.get_job(job_id)
    assert job is not None and job.status == "running" and job.progress != {"step": 99}


def test_cancel_queued_at_once_and_running_via_heartbeat(store: JobStore) -> None:
    queued = new_job(store)
    job = store.request_cancel(queued)
    assert job is not None and job.status == "cancelled"
    assert store.claim_job(queued, "w", 3) is None
    running = new_job(store)
    store.claim_job(running, "w", 3)
    assert store.request_cancel(running, tenant="t2") is None  # other tenant: not found
    job = store.request_cancel(running)
    assert job is not None and job.status == "running" and job.cancel_requested
    assert store.heartbeat(running, worker="w") is True
    assert store.finish_job(running, "cancelled", worker="w")
    assert store.get_job(running).status == "cancelled"  # type: ignore[union-attr]


def test_requeued_job_with_cancel_or_no_attempts_left_ends_on_claim(store: JobStore) -> None:
    job_id = new_job(store)
    for i in range(2):
        assert store.claim_job(job_id, f"w{i}", max_attempts=2) is not None
        age_heartbeat(store, job_id, 120)
        before = store.get_job(job_id).heartbeat_at  # type: ignore[union-attr]
        assert store.requeue(job_id, before)
    assert store.claim_job(job_id, "w3", max_attempts=2) is None
    job = store.get_job(job_id)
    assert job is not None and job.status == "failed"
    assert "gave up after 2 attempts" in (job.error or "")
    other = new_job(store)
    store.claim_job(other, "w", 3)
    store.request_cancel(other)
    age_heartbeat(store, other, 120)
    assert store.requeue(other, store.get_job(other).heartbeat_at)  # type: ignore[union-attr]
    assert store.claim_job(other, "w2", 3) is None
    assert store.get_job(other).status == "cancelled"  # type: ignore[union-attr]


def test_stale_jobs_and_conditional_requeue(store: JobStore) -> None:
    fresh, stale = new_job(store), new_job(store)
    store.claim_job(fresh, "w1", 3)
    store.claim_job(stale, "w2", 3)
    age_heartbeat(store, stale, 120)
    found = store.stale_jobs(60)
    assert [j.id for j in found] == [stale]
    store.heartbeat(stale, worker="w2")  # the worker was alive after all
    assert not store.requeue(stale, found[0].heartbeat_at)
    age_heartbeat(store, stale, 120)
    job = store.stale_jobs(60)[0]
    assert store.requeue(stale, job.heartbeat_at)
    assert not store.requeue(stale, job.heartbeat_at)  # a second reaper loses
    requeued = store.get_job(stale)
    assert requeued is not None and requeued.status == "queued" and requeued.worker is None


def test_store_survives_reopening(db_url: str) -> None:
    first = JobStore(db_url)
    job_id = new_job(first)
    first.close()
    second = JobStore(db_url)  # migrations are idempotent
    assert second.get_job(job_id) is not None
    second.close()


def test_cost_models_and_uploads_are_per_tenant(store: JobStore) -> None:
    cm = store.create_cost_model("t1", {"unit": "ms", "layers": {}}, None, "m")
    assert store.get_cost_model(cm.id, tenant="t1").data["unit"] == "ms"  # type: ignore[union-attr]
    assert store.get_cost_model(cm.id, tenant="t2") is None
    assert store.list_cost_models(tenant="t1")[1] == 1
    up = store.create_upload("t1", "x.npz", "npz", 10, "0" * 64, {"x": {}})
    assert store.get_upload(up.id, tenant="t2") is None
    assert [u.id for u in store.list_uploads("t1")[0]] == [up.id]


def test_a_killed_job_process_is_named_in_the_record_and_the_final_error(tmp_path: Path) -> None:
    from spartan_service.jobs.store import lost_reason

    store = JobStore(f"sqlite:///{tmp_path / 'k.db'}")
    job = store.create_job("t", {}, "cpu", None)
    store.claim_job(job.id, "celery@h/4242/abc123", max_attempts=3)
    assert store.note_process_killed(4242, "SIGKILL") == job.id
    assert store.note_process_killed(4243, "SIGKILL") is None  # no job of that process
    warnings = store.get_job(job.id).warnings
    assert warnings[0].startswith("attempt 1: its worker process (pid 4242) was killed by "
                                  "SIGKILL (most likely out of memory)")
    assert "most likely out of memory" in lost_reason(warnings)
    assert lost_reason(["attempt 1: its worker process (pid 1) was killed by SIGSEGV"]) == (
        " (its worker process (pid 1) was killed by SIGSEGV)")
    assert lost_reason([]) == ""
    store.close()
