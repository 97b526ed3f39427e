"""`GET /metrics` read back with prometheus-client's own parser: request counts and latency by
route template, jobs by state and queue, queue depth, workers' heartbeats."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.service.conftest import MakeClient
from tests.service.factories import CONTRACT_SPEC, store_of


def scrape(client: TestClient) -> dict[str, Any]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(response.text)}


def samples(family: Any, name: str | None = None) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(s.labels.items())): s.value for s in family.samples
            if name is None or s.name == name}


def test_jobs_queue_depth_and_heartbeats(client: TestClient) -> None:
    ids = [client.post("/v1/jobs", json=CONTRACT_SPEC).json()["id"] for _ in range(3)]
    assert client.post("/v1/jobs", json={**CONTRACT_SPEC, "queue": "gpu"}).status_code == 202
    store = store_of(client)
    assert store.claim_job(ids[0], "celery@a/1", 3) is not None
    client.post(f"/v1/jobs/{ids[1]}/cancel")
    metrics = scrape(client)

    jobs = samples(metrics["spartan_jobs"])
    train = ("kind", "train")
    assert jobs[(train, ("queue", "cpu"), ("status", "running"))] == 1
    assert jobs[(train, ("queue", "cpu"), ("status", "queued"))] == 1
    assert jobs[(train, ("queue", "cpu"), ("status", "cancelled"))] == 1
    assert jobs[(train, ("queue", "gpu"), ("status", "queued"))] == 1
    assert jobs[(train, ("queue", "gpu"), ("status", "failed"))] == 0  # every state, zero or not
    assert jobs[(("kind", "profile"), ("queue", "cpu"), ("status", "queued"))] == 0
    # Four messages were sent; no worker took any (the claim above bypassed the broker).
    depth = samples(metrics["spartan_queue_depth"])
    assert depth == {(("queue", "cpu"),): 3.0, (("queue", "gpu"),): 1.0}
    beats = samples(metrics["spartan_worker_heartbeat_age_seconds"])
    assert list(beats) == [(("worker", "celery@a/1"),)]
    assert 0 <= beats[(("worker", "celery@a/1"),)] < 60


def test_profiles_counted_apart_from_training_jobs(client: TestClient) -> None:
    assert client.post("/v1/jobs", json=CONTRACT_SPEC).status_code == 202
    body = {"name": "p", "model": {"arch": "mlp"}, "data": {"dataset": "digits"}}
    for _ in range(2):
        assert client.post("/v1/profiles", json=body).status_code == 202
    jobs = samples(scrape(client)["spartan_jobs"])
    queued = (("queue", "cpu"), ("status", "queued"))
    assert jobs[(("kind", "train"), *queued)] == 1
    assert jobs[(("kind", "profile"), *queued)] == 2


def test_requests_counted_by_route_template(client: TestClient) -> None:
    job = client.post("/v1/jobs", json=CONTRACT_SPEC).json()["id"]
    for _ in range(2):
        assert client.get(f"/v1/jobs/{job}").status_code == 200
    assert client.get(f"/v1/jobs/{'0' * 32}").status_code == 404
    assert client.get("/no/such/page").status_code == 404
    metrics = scrape(client)
    counts = samples(metrics["spartan_http_requests"], "spartan_http_requests_total")
    route = ("route", "/v1/jobs/{job_id}")
    assert counts[(("method", "GET"), route, ("status", "200"))] == 2
    assert counts[(("method", "GET"), route, ("status", "404"))] == 1
    assert counts[(("method", "POST"), ("route", "/v1/jobs"), ("status", "202"))] == 1
    assert counts[(("method", "GET"), ("route", "unmatched"), ("status", "404"))] == 1
    latency = metrics["spartan_http_request_duration_seconds"]
    count = samples(latency, "spartan_http_request_duration_seconds_count")
    assert count[(("method", "GET"), route)] == 3
    buckets = samples(latency, "spartan_http_request_duration_seconds_bucket")
    assert buckets[(("le", "+Inf"), ("method", "GET"), route)] == 3


def test_metrics_without_a_store_still_answer(make_client: MakeClient, tmp_path: Any) -> None:
    # A database that cannot be reached: the store figures are left out, not a 500.
    client = make_client(database_url="postgresql+psycopg://nobody@127.0.0.1:1/none")
    metrics = scrape(client)
    assert "spartan_jobs" not in metrics
    assert "spartan_http_requests" in metrics


def test_metrics_need_no_token(make_client: MakeClient) -> None:
    secured = make_client(api_tokens="alice:token-alice")
    assert secured.get("/v1/jobs").status_code == 401
    assert "spartan_jobs" in scrape(secured)
