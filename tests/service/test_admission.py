"""Admission of multi-process jobs against the worker registry (jobs.registry)."""

from __future__ import annotations

from datetime import timedelta

from fastapi.testclient import TestClient
from sqlalchemy import update

from jobs.models import WorkerRecord, utcnow
from tests.service.factories import locs, spec, store_of

FOUR = spec(resources={"processes": 4})


def test_without_live_workers_a_big_job_is_accepted_and_waits(client: TestClient) -> None:
    response = client.post("/v1/jobs", json=FOUR)
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "queued"


def test_a_job_no_live_worker_can_run_is_refused(client: TestClient) -> None:
    store = store_of(client)
    store.register_worker("small@a", {"cpu": 2}, {"cpus": 2, "gpus": []})
    store.register_worker("gpu@b", {"gpu": 8}, {"cpus": 32, "gpus": ["H100"] * 8})
    response = client.post("/v1/jobs", json=FOUR)
    assert response.status_code == 422
    assert locs(response) == [["body", "resources", "processes"]]
    assert "the most is 2 (1 worker(s))" in response.text
    assert store.list_jobs()[1] == 0  # nothing stored
    two = client.post("/v1/jobs", json=spec(resources={"processes": 2}))
    assert two.status_code == 202, two.text
    on_gpu = client.post("/v1/jobs", json={**FOUR, "queue": "gpu"})
    assert on_gpu.status_code == 202, on_gpu.text


def test_stale_and_departed_workers_do_not_count(client: TestClient) -> None:
    store = store_of(client)
    store.register_worker("small@a", {"cpu": 2}, {"cpus": 2, "gpus": []})
    with store.session() as s:
        s.execute(update(WorkerRecord).values(seen_at=utcnow() - timedelta(minutes=5)))
    assert client.post("/v1/jobs", json=FOUR).status_code == 202
    store.register_worker("small@a", {"cpu": 2}, {"cpus": 2, "gpus": []})  # refreshed
    assert client.post("/v1/jobs", json=FOUR).status_code == 422
    store.forget_worker("small@a")
    assert store.live_workers() == []
    assert client.post("/v1/jobs", json=FOUR).status_code == 202


def test_a_job_whose_queue_no_live_worker_serves_says_so(client: TestClient) -> None:
    from worker.tasks import note_unserved

    store = store_of(client)
    early = client.post("/v1/jobs", json={**spec(), "queue": "gpu"}).json()
    assert early["warnings"] == []  # no worker alive to tell yet: it may be starting
    store.register_worker("cpu@a", {"cpu": 2}, {"cpus": 2, "gpus": []})
    late = client.post("/v1/jobs", json={**spec(), "queue": "gpu"}).json()
    assert any("no live worker serves queue 'gpu'" in w and "cpu" in w
               for w in late["warnings"])
    assert client.post("/v1/jobs", json=spec()).json()["warnings"] == []  # cpu is served

    note_unserved(store)  # a reaper round: the job queued before the worker came is noted
    note_unserved(store)  # once
    noted = client.get(f"/v1/jobs/{early['id']}").json()["warnings"]
    assert len(noted) == 1 and "no live worker serves queue 'gpu'" in noted[0]
    assert len(client.get(f"/v1/jobs/{late['id']}").json()["warnings"]) == 1
