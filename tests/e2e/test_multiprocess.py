"""A job across 2 processes (resources.processes) through the REST API, end to end: on the
embedded default (`spartan serve`, SQLite, filesystem queue) and on Redis + PostgreSQL with a
separate worker. The ranks run under gloo on this machine's CPU; every checkpoint gathered both
ranks' masks and weights and found them identical (report training.ranks_compared).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from spartan_service.cli.client import Client
from tests.e2e.conftest import Serve, base_env, stop_process, wait_for
from tests.e2e.test_distributed import real_backends, start_worker, wait_ready

SPEC: dict[str, Any] = {
    "model": {"arch": "mlp", "kwargs": {"hidden": [32]}}, "data": {"dataset": "digits"},
    "sparsity": {"method": "spartan", "budget": 0.25},
    "training": {"epochs": 2, "checkpoint_every": 10}, "resources": {"processes": 2},
}


def check_two_ranks(client: Client) -> None:
    job = wait_for(client, client.submit(SPEC)["id"], statuses=("succeeded",), timeout=400)
    report = client.request("GET", f"/v1/jobs/{job['id']}/artifacts/report.json")
    training = report["training"]
    assert training["world_size"] == 2 and training["global_batch"] == 64
    # checkpoints at steps 10, 20, 30, 40 and both epoch ends (23, 46)
    assert training["ranks_compared"] == 6
    names = [a["name"] for a in client.artifacts(job["id"])]
    assert len(names) == len(set(names)) and "checkpoint.safetensors" not in names
    assert {"model.safetensors", "masks.safetensors", "report.json"} <= set(names)


@pytest.mark.slow
def test_two_process_job_on_the_embedded_default(tmp_path: Path) -> None:
    serve = Serve(base_env(tmp_path / "data"), tmp_path, workers=1)
    try:
        client = serve.start()
        check_two_ranks(client)
        # The embedded worker advertised its cores by now: more ranks than that are refused.
        big = client.http.post("/v1/jobs", json={**SPEC, "resources": {"processes": 64}})
        assert big.status_code == 422, big.text
        assert big.json()["detail"][0]["loc"] == ["body", "resources", "processes"]
        # A cancel reaches rank 0's lease; all ranks stop, and none is left behind.
        long = client.submit({**SPEC, "training": {"epochs": 200}})
        wait_for(client, long["id"], statuses=("running",), timeout=300, min_step=5)
        client.request("POST", f"/v1/jobs/{long['id']}/cancel")
        wait_for(client, long["id"], statuses=("cancelled",), timeout=120)
    finally:
        serve.stop()  # asserts that no rank process is left behind


@pytest.mark.distributed
def test_two_process_job_on_redis_and_postgres(tmp_path: Path) -> None:
    with real_backends() as (broker_url, database_url):
        env = base_env(tmp_path / "data", SPARTAN_BROKER_URL=broker_url,
                       SPARTAN_DATABASE_URL=database_url)
        serve = Serve(env, tmp_path, workers=0)
        worker: subprocess.Popen[bytes] | None = None
        try:
            client = serve.start()
            log = tmp_path / "worker.txt"
            worker = start_worker(env, "w1", log)
            wait_ready(worker, log)
            check_two_ranks(client)
        finally:
            serve.stop()
            if worker is not None:
                stop_process(worker)
