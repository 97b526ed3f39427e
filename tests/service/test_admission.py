"""Admission of multi-process jobs against the worker registry (spartan_service.jobs.registry)."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
from fastapi.testclient import TestClient
from sqlalchemy import update

from spartan_service.jobs.models import WorkerRecord, utcnow
from tests.service.conftest import MakeClient
from tests.service.factories import locs, npz_bytes, spec, store_of

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
    from spartan_service.worker.tasks import note_unserved

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


def test_a_job_over_a_resource_limit_is_refused_naming_it(make_client: MakeClient) -> None:
    client = make_client()
    steps = client.post("/v1/jobs", json=spec(training={"epochs": 10000, "batch_size": 1}))
    assert steps.status_code == 422 and locs(steps) == [["body", "training"]]
    assert "14,380,000 steps" in steps.text and "SPARTAN_MAX_JOB_STEPS" in steps.text
    big = spec(model={"arch": "mlp", "kwargs": {"hidden": [20000, 20000]}})
    params = client.post("/v1/jobs", json=big)
    assert params.status_code == 422 and ["body", "model"] in locs(params)
    assert "SPARTAN_MAX_JOB_PARAMS" in params.text and "SPARTAN_MAX_JOB_MEMORY_BYTES" in params.text
    wide = spec(model={"arch": "resnet", "kwargs": {"width": 128, "depth": 56}},
                training={"epochs": 1, "batch_size": 8192})
    memory = client.post("/v1/jobs", json=wide)
    assert memory.status_code == 422 and "GiB of memory" in memory.text
    assert store_of(client).list_jobs()[1] == 0  # nothing stored
    assert client.post("/v1/jobs", json=spec()).status_code == 202  # the defaults admit demos


def test_limits_are_per_queue(make_client: MakeClient) -> None:
    client = make_client(max_job_steps="cpu:50,gpu:100000")
    cpu = client.post("/v1/jobs", json=spec(training={"epochs": 3}))
    assert cpu.status_code == 422 and "limit is 50" in cpu.text
    gpu = client.post("/v1/jobs", json={**spec(training={"epochs": 3}), "queue": "gpu"})
    assert gpu.status_code == 202, gpu.text


def test_uploaded_data_counts_against_the_dataset_limit(make_client: MakeClient) -> None:
    client = make_client(max_job_dataset_bytes="1000")
    data = npz_bytes(x=np.zeros((100, 8), np.float32), y=np.zeros(100, np.int64))
    upload = client.post("/v1/uploads", files={"file": ("d.npz", data, "application/x")}).json()
    response = client.post("/v1/jobs", json=spec(data={"dataset": "upload",
                                                       "upload": upload["id"]}))
    assert response.status_code == 422 and locs(response) == [["body", "data"]]
    assert "SPARTAN_MAX_JOB_DATASET_BYTES" in response.text
