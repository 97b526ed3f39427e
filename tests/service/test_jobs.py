"""Jobs routes: submit (202, Location, enqueued), list, get, cancel, artifacts, and every 4xx."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.service.conftest import MakeClient
from tests.service.factories import CONTRACT_SPEC, artifacts_of, locs, spec, store_of


def queued_messages(data_dir: Path, queue: str) -> list[Path]:
    return sorted((data_dir / "broker" / "queue").glob(f"*.{queue}.msg"))


def submit(client: TestClient, body: dict[str, Any] | None = None) -> dict[str, Any]:
    response = client.post("/v1/jobs", json=body or CONTRACT_SPEC)
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


def test_submit_returns_202_location_and_enqueues(client: TestClient, tmp_path: Path) -> None:
    response = client.post("/v1/jobs", json=CONTRACT_SPEC)
    assert response.status_code == 202
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued"
    assert job["queue"] == "cpu"
    assert job["progress"] == {"step": 0, "total_steps": None}
    assert job["attempts"] == 0 and job["error"] is None and job["started_at"] is None
    # Defaults are filled in and the spec is stored as submitted.
    assert job["spec"]["training"]["epochs"] == 2
    assert job["spec"]["sparsity"]["block"] == [1, 1]
    messages = queued_messages(tmp_path, "cpu")
    assert len(messages) == 1 and job["id"] in messages[0].read_text()


def test_cuda_job_goes_to_gpu_queue(client: TestClient, tmp_path: Path) -> None:
    job = submit(client, spec(training={"epochs": 1, "device": "cuda"}))
    assert job["queue"] == "gpu"
    assert len(queued_messages(tmp_path, "gpu")) == 1
    assert not queued_messages(tmp_path, "cpu")


def test_block_that_does_not_divide_a_layer_is_a_warning(client: TestClient) -> None:
    job = submit(client, spec(sparsity={"budget": 0.2, "block": [4, 4]}))
    # mlp on digits: head is 10 x 128; 4 does not divide 10.
    assert any("head.weight" in w for w in job["warnings"])
    assert client.get(f"/v1/jobs/{job['id']}").json()["warnings"] == job["warnings"]


@pytest.mark.parametrize(
    ("body", "loc", "words"),
    [
        (spec(model={"arch": "nope"}), ["body", "model", "arch"], ["mlp", "cnn", "resnet", "vit"]),
        (spec(model={"arch": "mlp", "kwargs": {"depth": 3}}), ["body", "model"], ["hidden"]),
        (spec(data={"dataset": "imagenet"}), ["body", "data"], ["digits", "mnist1d"]),
        (spec(sparsity={"budget": 0}), ["body", "sparsity", "budget"], ["greater than 0"]),
        (spec(sparsity={"budget": 1.5}), ["body", "sparsity", "budget"], ["less than"]),
        (spec(sparsity={"block": [3, 3]}), ["body", "sparsity", "block"], ["[4, 4]"]),
        (spec(sparsity={"method": "magic"}), ["body", "sparsity", "method"], ["spartan"]),
        (spec(training={"epochs": 0}), ["body", "training", "epochs"], []),
        (spec(cost_model={"kind": "fitted"}), ["body", "cost_model"], ["id"]),
        (spec(colour="red"), ["body", "colour"], ["Extra inputs"]),
        (spec(queue="tpu"), ["body", "queue"], ["cpu", "gpu"]),
        (spec(name="a\x00b"), ["body", "name"], ["NUL"]),
        (spec(resources={"processes": 3}), ["body", "resources"], ["batch_size 64", "of 3"]),
        (spec(resources={"nodes": 2}), ["body", "resources", "nodes"], ["not supported"]),
        (spec(resources={"processes": 0}), ["body", "resources", "processes"], []),
    ],
)
def test_invalid_spec_is_422_naming_the_field(
    client: TestClient, body: dict[str, Any], loc: list[str], words: list[str]
) -> None:
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 422
    detail = response.json()["detail"]
    match = [item for item in detail if item["loc"] == loc]
    assert match, detail
    for word in words:
        assert word in match[0]["msg"]
    assert client.get("/v1/jobs").json()["count"] == 0


def test_malformed_json_is_422(client: TestClient) -> None:
    response = client.post("/v1/jobs", content=b"{not json",
                           headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"


@pytest.mark.parametrize(
    ("section", "loc"),
    [
        ({"cost_model": {"kind": "fitted", "id": "0" * 32}}, ["body", "cost_model", "id"]),
        ({"model": {"arch": "mlp", "weights": "0" * 32}}, ["body", "model", "weights"]),
        ({"data": {"dataset": "upload", "upload": "0" * 32}}, ["body", "data", "upload"]),
    ],
)
def test_unknown_referenced_ids_are_422(
    client: TestClient, section: dict[str, Any], loc: list[str]
) -> None:
    response = client.post("/v1/jobs", json=spec(**section))
    assert response.status_code == 422
    assert locs(response) == [loc]
    assert "no " in response.json()["detail"][0]["msg"]


def test_body_over_the_limit_is_413(make_client: MakeClient) -> None:
    client = make_client(max_body_bytes=2000)
    big = spec(tags=["x" * 100] * 30)
    response = client.post("/v1/jobs", json=big)
    assert response.status_code == 413
    assert "limit of 2000 bytes" in response.json()["detail"]

    # Without Content-Length (chunked), the limit holds while the body streams in.
    def chunks() -> Any:
        yield b'{"tags": ["'
        for _ in range(50):
            yield b"y" * 100
        yield b'"]}'

    response = client.post("/v1/jobs", content=chunks(),
                           headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["detail"].startswith("request body is larger")
    assert client.get("/v1/jobs").json()["count"] == 0


def test_enqueue_failure_marks_the_job_failed_and_answers_503(make_client: MakeClient) -> None:
    client = make_client(broker_url="redis://127.0.0.1:1/0")  # nothing listens on port 1
    response = client.post("/v1/jobs", json=CONTRACT_SPEC)
    assert response.status_code == 503
    assert "queue is unavailable" in response.json()["detail"]
    jobs = client.get("/v1/jobs").json()
    assert jobs["count"] == 1
    assert jobs["data"][0]["status"] == "failed"
    assert jobs["data"][0]["error"].startswith("could not enqueue the job")
    assert jobs["data"][0]["finished_at"] is not None


def test_list_paginates_newest_first_and_filters_by_status(client: TestClient) -> None:
    ids = [submit(client, spec(name=f"job {i}"))["id"] for i in range(3)]
    page = client.get("/v1/jobs", params={"limit": 2}).json()
    assert page["count"] == 3
    assert [j["id"] for j in page["data"]] == ids[::-1][:2]
    page = client.get("/v1/jobs", params={"limit": 2, "offset": 2}).json()
    assert [j["id"] for j in page["data"]] == [ids[0]]
    client.post(f"/v1/jobs/{ids[1]}/cancel")
    cancelled = client.get("/v1/jobs", params={"status": "cancelled"}).json()
    assert cancelled["count"] == 1 and cancelled["data"][0]["id"] == ids[1]
    assert client.get("/v1/jobs", params={"status": "queued"}).json()["count"] == 2


@pytest.mark.parametrize(
    ("params", "loc"),
    [({"status": "done"}, ["query", "status"]), ({"limit": 0}, ["query", "limit"]),
     ({"limit": 10_000}, ["query", "limit"]), ({"offset": -1}, ["query", "offset"]),
     ({"offset": 10**20}, ["query", "offset"])],
)
def test_bad_list_parameters_are_422(
    client: TestClient, params: dict[str, Any], loc: list[str]
) -> None:
    response = client.get("/v1/jobs", params=params)
    assert response.status_code == 422
    assert locs(response) == [loc]


def test_get_job_has_every_field(client: TestClient) -> None:
    job_id = submit(client, spec(name="fields"))["id"]
    store = store_of(client)
    store.claim_job(job_id, "w1@host", max_attempts=3)
    store.heartbeat(job_id, progress={"step": 5, "total_steps": 46, "loss": 0.5})
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["name"] == "fields"
    assert job["status"] == "running" and job["worker"] == "w1@host" and job["attempts"] == 1
    assert job["progress"] == {"step": 5, "total_steps": 46, "loss": 0.5}
    for key in ("created_at", "started_at", "updated_at", "finished_at", "metrics", "warnings",
                "resumed_from_step", "queue", "spec", "error"):
        assert key in job
    assert job["started_at"] is not None and job["finished_at"] is None


def test_unknown_job_is_404_on_every_route(client: TestClient) -> None:
    missing = "f" * 32
    for method, path in [("GET", f"/v1/jobs/{missing}"), ("POST", f"/v1/jobs/{missing}/cancel"),
                         ("GET", f"/v1/jobs/{missing}/artifacts"),
                         ("GET", f"/v1/jobs/{missing}/artifacts/report.json")]:
        response = client.request(method, path)
        assert response.status_code == 404, path
        assert response.json() == {"detail": "job not found"}


def test_cancel_queued_running_and_finished_jobs(client: TestClient) -> None:
    store = store_of(client)
    queued = submit(client)["id"]
    response = client.post(f"/v1/jobs/{queued}/cancel")
    assert response.status_code == 202
    assert response.json()["status"] == "cancelled"
    assert client.post(f"/v1/jobs/{queued}/cancel").json()["status"] == "cancelled"

    running = submit(client)["id"]
    store.claim_job(running, "w", max_attempts=3)
    body = client.post(f"/v1/jobs/{running}/cancel").json()
    assert body["status"] == "running" and body["cancel_requested"] is True
    assert store.heartbeat(running) is True  # the worker learns of it at its next report

    done = submit(client)["id"]
    store.claim_job(done, "w", max_attempts=3)
    store.finish_job(done, "succeeded")
    response = client.post(f"/v1/jobs/{done}/cancel")
    assert response.status_code == 409
    assert response.json() == {"detail": "job already succeeded"}


def test_artifacts_are_listed_and_streamed(client: TestClient) -> None:
    job_id = submit(client)["id"]
    assert client.get(f"/v1/jobs/{job_id}/artifacts").json() == {"data": [], "count": 0}
    artifacts = artifacts_of(client)
    big = bytes(range(256)) * (3 * 4096 + 7)  # ~3 MB: several chunks
    artifacts.write_bytes(job_id, "model.safetensors", big)
    artifacts.write_bytes(job_id, "report.json", b'{"ok": true}')
    listing = client.get(f"/v1/jobs/{job_id}/artifacts").json()
    assert listing == {"data": [{"name": "model.safetensors", "size": len(big)},
                                {"name": "report.json", "size": 12}], "count": 2}
    response = client.get(f"/v1/jobs/{job_id}/artifacts/model.safetensors")
    assert response.status_code == 200 and response.content == big
    assert response.headers["content-type"] == "application/octet-stream"
    report = client.get(f"/v1/jobs/{job_id}/artifacts/report.json")
    assert report.json() == {"ok": True}
    for name in ("missing.bin", ".hidden", "..%2Fspartan.db", "a%2F..%2F..%2Fspartan.db"):
        response = client.get(f"/v1/jobs/{job_id}/artifacts/{name}")
        assert response.status_code == 404, name


def test_unknown_query_parameter_is_refused(client: TestClient) -> None:
    r = client.get("/v1/jobs", params={"stauts": "running"})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["query", "stauts"]
    assert "status" in r.json()["detail"][0]["msg"]
    assert client.get("/v1/jobs", params={"status": "running"}).status_code == 200
