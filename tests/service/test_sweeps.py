"""Sweeps over the API: points queued as jobs, results and the frontier read from their
reports, cancel, tenancy and every 4xx. The worker side is driven through the stores (the end
to end test with a real worker is tests/e2e/test_sweeps.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from tests.service.conftest import MakeClient
from tests.service.factories import artifacts_of, locs, store_of

BASE: dict[str, Any] = {"model": {"arch": "mlp"}, "data": {"dataset": "digits"},
                        "training": {"epochs": 1}}
ALICE = {"Authorization": "Bearer token-alice"}
BOB = {"Authorization": "Bearer token-bob"}


def create(client: TestClient, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/sweeps", json={"spec": BASE, **body})
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/v1/sweeps/{response.json()['id']}"
    sweep: dict[str, Any] = response.json()
    return sweep


def finish(client: TestClient, job_id: str, accuracy: float, sparse_ms: float,
           dense_ms: float = 4.0) -> None:
    """What a worker leaves behind: a report (today's speedup section), then the record."""
    report = {"accuracy": {"dense": None, "sparse": accuracy, "final": accuracy},
              "speedup": {"unit": "ms", "batches": [
                  {"batch": 64, "dense_ms": dense_ms, "sparse_ms": sparse_ms}]},
              "cost": {"unit": "params", "predicted": 1000}}
    artifacts_of(client).write_bytes(job_id, "report.json", json.dumps(report).encode())
    store = store_of(client)
    assert store.claim_job(job_id, "w", 3) is not None
    assert store.finish_job(job_id, "succeeded", worker="w")


def test_sweep_queues_one_job_per_point(client: TestClient, tmp_path: Path) -> None:
    sweep = create(client, name="frontier", budgets=[0.05, 0.1, 0.3], methods=["spartan", "dense"])
    assert sweep["status"] == "queued" and sweep["counts"] == {"queued": 4}
    assert sweep["budget_kind"] == "fraction" and sweep["budgets"] == [0.05, 0.1, 0.3]
    points = sweep["points"]
    assert [(p["method"], p["budget"]) for p in points] == [
        ("spartan", 0.05), ("spartan", 0.1), ("spartan", 0.3), ("dense", None)]
    assert all(p["status"] == "queued" and p["pareto"] is False for p in points)
    messages = sorted((tmp_path / "broker" / "queue").glob("*.cpu.msg"))
    assert len(messages) == 4
    for p in points:
        job = client.get(f"/v1/jobs/{p['job_id']}").json()
        assert f"sweep:{sweep['id']}" in job["spec"]["tags"]
        assert job["name"].startswith("frontier ")
        if p["budget"] is not None:
            assert job["spec"]["sparsity"]["budget"] == p["budget"]
    assert client.get("/v1/jobs").json()["count"] == 4


def test_points_carry_results_and_the_frontier(client: TestClient) -> None:
    sweep = create(client, budgets=[0.05, 0.1, 0.2, 0.4])
    ids = [p["job_id"] for p in sweep["points"]]
    # (accuracy, ms): 0.2 is slower and less accurate than 0.1, so off the frontier.
    finish(client, ids[0], 0.90, 1.0)
    finish(client, ids[1], 0.95, 2.0)
    finish(client, ids[2], 0.93, 2.5)
    got = client.get(f"/v1/sweeps/{sweep['id']}").json()
    assert got["status"] == "running" and got["counts"] == {"succeeded": 3, "queued": 1}
    assert [p["pareto"] for p in got["points"]] == [True, True, False, False]
    assert [p["accuracy"] for p in got["points"]] == [0.90, 0.95, 0.93, None]
    assert [p["measured_latency"] for p in got["points"]] == [1.0, 2.0, 2.5, None]
    assert all(p["predicted_latency"] is None for p in got["points"])  # a params cost
    assert got["dense"] == {"accuracy": None, "measured_latency": 4.0, "job_id": None,
                            "source": "the points' reports"}
    # The job itself shows the same figures.
    job = client.get(f"/v1/jobs/{ids[1]}").json()
    assert job["results"]["accuracy"] == 0.95 and job["results"]["measured_latency"] == 2.0
    finish(client, ids[3], 0.97, 3.0)
    got = client.get(f"/v1/sweeps/{sweep['id']}").json()
    assert got["status"] == "succeeded"
    assert [p["pareto"] for p in got["points"]] == [True, True, False, True]


def test_cancel_cancels_unfinished_points(client: TestClient) -> None:
    sweep = create(client, budgets=[0.1, 0.2, 0.3])
    ids = [p["job_id"] for p in sweep["points"]]
    finish(client, ids[0], 0.9, 1.0)
    assert store_of(client).claim_job(ids[1], "w", 3) is not None  # running
    response = client.post(f"/v1/sweeps/{sweep['id']}/cancel")
    assert response.status_code == 202
    got = response.json()
    assert got["cancel_requested"] is True
    assert [p["status"] for p in got["points"]] == ["succeeded", "running", "cancelled"]
    assert client.get(f"/v1/jobs/{ids[1]}").json()["cancel_requested"] is True
    store_of(client).finish_job(ids[1], "cancelled")  # its worker notices
    got = client.get(f"/v1/sweeps/{sweep['id']}").json()
    assert got["status"] == "cancelled"
    assert got["points"][0]["accuracy"] == 0.9  # finished points keep their results


def test_list_sweeps(client: TestClient) -> None:
    first = create(client, budgets=[0.1])
    second = create(client, budgets=[0.1, 0.2])
    page = client.get("/v1/sweeps?limit=1").json()
    assert page["count"] == 2 and [s["id"] for s in page["data"]] == [second["id"]]
    assert "points" not in page["data"][0] and page["data"][0]["counts"] == {"queued": 2}
    assert client.get("/v1/sweeps?offset=1").json()["data"][0]["id"] == first["id"]


def test_bad_sweeps_are_422_naming_the_field(client: TestClient) -> None:
    cases = [
        ({"spec": BASE, "budgets": []}, ["body", "budgets"]),
        ({"spec": BASE, "budgets": [0.1, 2.0]}, ["body", "budgets", 1]),
        ({"spec": BASE, "budgets": ["a"]}, ["body", "budgets", 0]),
        ({"spec": {**BASE, "model": {"arch": "mpl"}}, "budgets": [0.1]},
         ["body", "spec", "model", "arch"]),
        ({"spec": BASE, "budgets": [0.1], "methods": ["magic"]}, ["body", "methods", 0]),
        ({"spec": BASE, "budgets": [0.1], "extra": 1}, ["body", "extra"]),
        ({"spec": BASE, "budgets": [0.01 * i for i in range(1, 101)],
          "methods": ["spartan", "imp", "dual_averaging"]}, ["body", "budgets"]),
        ({"spec": {**BASE, "cost_model": {"kind": "fitted", "id": "f" * 32}}, "budgets": [0.1]},
         ["body", "spec", "cost_model", "id"]),
    ]
    for body, loc in cases:
        response = client.post("/v1/sweeps", json=body)
        assert response.status_code == 422, (body, response.text)
        assert loc in locs(response), (loc, response.json())
    assert client.get("/v1/jobs").json()["count"] == 0  # nothing half-created
    assert client.get("/v1/sweeps").json()["count"] == 0
    assert client.get(f"/v1/sweeps/{'0' * 32}").status_code == 404
    assert client.post(f"/v1/sweeps/{'0' * 32}/cancel").status_code == 404
    assert client.get("/v1/sweeps?limit=0").status_code == 422


def test_tenants_see_only_their_own_sweeps(make_client: MakeClient) -> None:
    secured = make_client(api_tokens="alice:token-alice,bob:token-bob")
    response = secured.post("/v1/sweeps", json={"spec": BASE, "budgets": [0.1, 0.2]},
                            headers=ALICE)
    assert response.status_code == 202
    sweep = response.json()
    assert secured.get(f"/v1/sweeps/{sweep['id']}", headers=BOB).status_code == 404
    assert secured.post(f"/v1/sweeps/{sweep['id']}/cancel", headers=BOB).status_code == 404
    assert secured.get("/v1/sweeps", headers=BOB).json() == {"data": [], "count": 0}
    assert secured.get(f"/v1/sweeps/{sweep['id']}", headers=ALICE).json()["status"] == "queued"
    assert secured.get("/v1/sweeps").status_code == 401
    job_id = sweep["points"][0]["job_id"]
    assert secured.get(f"/v1/jobs/{job_id}", headers=BOB).status_code == 404


def test_a_deleted_point_says_so(client: TestClient) -> None:
    sweep = create(client, budgets=[0.1, 0.2])
    ids = [p["job_id"] for p in sweep["points"]]
    finish(client, ids[0], 0.9, 1.0)
    store_of(client).append_logs(ids[0], 1, [{"level": "INFO", "logger": "t", "message": "x"}])
    assert client.delete(f"/v1/jobs/{ids[0]}").status_code == 204
    assert store_of(client).job_logs(ids[0]) == ([], 0)  # its log went with it
    point = client.get(f"/v1/sweeps/{sweep['id']}").json()["points"][0]
    assert point["status"] == "failed" and point["error"] == "the job was deleted"
    assert point["accuracy"] is None and point["pareto"] is False
