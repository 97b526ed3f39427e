"""Profile jobs end to end: on the embedded default (`spartan serve`, SQLite, filesystem queue)
through the CLI, and on Redis + PostgreSQL with a separate worker process; then a job that
names the cost model closes the loop and a refit makes the next version."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spartan_service.cli.client import Client
from spartan_service.costmodels import hardware
from tests.e2e.conftest import REPO, Serve, base_env, stop_process, wait_for
from tests.e2e.test_distributed import real_backends, start_worker, wait_ready
from tests.worker.test_closed_loop import channel_budget_ms

MLP = {"arch": "mlp", "kwargs": {"hidden": [256]}}
PROFILE = {"name": "e2e-cpu", "model": MLP, "data": {"dataset": "digits"}, "quick": True,
           "kernels": ["csr"], "batch_sizes": [64]}


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    root = tmp_path_factory.mktemp("profiles")
    # One torch thread, as the test process: the worker's fingerprint is then this one's.
    server = Serve(base_env(root / "data", SPARTAN_WORKER_THREADS="1"), root, workers=1)
    server.start()
    yield server
    server.stop()


def cli(serve: Serve, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    assert serve.client is not None
    return subprocess.run([sys.executable, "-m", "spartan_service.cli",
                           *args, "--url", serve.client.url],
                          cwd=REPO, env=serve.env, capture_output=True, text=True,
                          timeout=timeout)


def weight_budget_ms(cost_model: dict[str, Any], fraction: float) -> float:
    """A latency budget `fraction` of the way from the fixed cost (overhead, intercepts) to the
    dense model's predicted latency. A fraction of the dense latency is not always feasible:
    where a layer's CSR kernel was slower than dense at most densities, little is left to cut."""
    from spartan_service.costmodels.deployment import weights_latency_range

    fixed, dense = weights_latency_range(cost_model)
    assert dense > fixed, f"nothing for sparsity to remove under {cost_model}"
    return fixed + fraction * (dense - fixed)


def wait_profile(client: Client, profile_id: str) -> dict[str, Any]:
    profile = client.wait_profile(profile_id, timeout_s=180)
    assert profile["status"] == "succeeded", profile
    return profile


def check_hardware(profile: dict[str, Any], threads: int = 1) -> None:
    hw = profile["hardware"]
    assert hw["device"] == "cpu" and hw["cpu"] == hardware.cpu_model() and hw["gpu"] is None
    assert hw["threads"] == threads and hw["kernels"] == ["csr"]
    assert hw["torch"] and hw["cores"]


@pytest.mark.slow
def test_profile_job_through_the_cli_and_the_loop_closed(serve: Serve, tmp_path: Path) -> None:
    assert serve.client is not None
    out = tmp_path / "profile.json"
    done = cli(serve, "profile", "--submit", "--wait", "--model", "mlp", "--kwargs",
               json.dumps(MLP["kwargs"]), "--kernel", "csr", "--quick", "--name", "e2e-cpu",
               "-o", str(out))
    assert done.returncode == 0, done.stderr + serve.log_text()
    profile_id = done.stdout.split()[1]
    profile = wait_profile(serve.client, profile_id)
    check_hardware(profile)
    assert profile["profile"]["layers"][0]["name"] == "layers.0"
    assert json.loads(out.read_text()) == profile["profile"]
    model_id = profile["cost_model_id"]

    listed = cli(serve, "cost-models", "list", "--hardware", hardware.cpu_model()[:8])
    assert model_id in listed.stdout and "e2e-cpu v1" in listed.stdout
    # `spartan fit` output registers as it is: the next version of the name.
    fitted = tmp_path / "fitted.json"
    fit = subprocess.run([sys.executable, "-m", "spartan_service.cli",
                          "fit", str(out), "-o", str(fitted)],
                         cwd=REPO, env=serve.env, capture_output=True, text=True, timeout=120)
    assert fit.returncode == 0, fit.stderr
    registered = cli(serve, "cost-models", "register", str(fitted), "--name", "e2e-cpu")
    assert registered.returncode == 0, registered.stderr
    assert "e2e-cpu v2" in registered.stdout

    # A job naming the cost model: the worker picks a version measured here, trains, and
    # measures what it exported beside the prediction.
    budget_ms = weight_budget_ms(serve.client.cost_model(model_id)["data"], 0.5)
    job = serve.client.submit({"model": MLP, "data": {"dataset": "digits"},
                               "training": {"epochs": 1},
                               "cost_model": {"kind": "fitted", "name": "e2e-cpu",
                                              "strict_hardware": True, "budget_ms": budget_ms}})
    job = wait_for(serve.client, job["id"], timeout=180)
    assert job["status"] == "succeeded", job["error"]
    shown = json.loads(cli(serve, "cost-models", "show", model_id).stdout)
    used = shown if shown["deployment"]["own_points"] else json.loads(
        cli(serve, "cost-models", "show", registered.stdout.split()[0]).stdout)
    assert used["deployment"]["points"] == 1
    refit = cli(serve, "cost-models", "refit", used["id"])
    assert refit.returncode == 0, refit.stderr
    assert "e2e-cpu v3" in refit.stdout and "deployed model(s)" in refit.stdout


def test_profile_failure_is_recorded(serve: Serve) -> None:
    assert serve.client is not None
    profile = serve.client.submit_profile({**PROFILE, "model": {**MLP, "weights": None},
                                           "device": "cuda", "queue": "cpu"})
    profile = serve.client.wait_profile(profile["id"], timeout_s=120)
    assert profile["status"] == "failed" and "CUDA" in profile["error"]


def test_structured_profile_job_and_the_loop_closed(serve: Serve) -> None:
    """channels: the profile fits a structured cost model; a channels job naming it stores
    the shrunk model's widths and times as a deployment point; the refit folds it in; the
    profile is then deleted through its own route (its cost models stay)."""
    assert serve.client is not None
    client = serve.client
    profile = client.submit_profile({**PROFILE, "name": "e2e-channels", "structure": "channels",
                                     "kernels": ["auto"], "widths": [0.25, 0.5, 1.0]})
    profile = wait_profile(client, profile["id"])
    model_id = profile["cost_model_id"]
    job = client.submit({"model": MLP, "data": {"dataset": "digits"}, "training": {"epochs": 1},
                         "sparsity": {"structure": "channels"},
                         "cost_model": {"kind": "fitted", "name": "e2e-channels",
                                        "strict_hardware": True, "budget_ms": channel_budget_ms(
                                            client.cost_model(model_id)["data"], 0.6)}})
    job = wait_for(client, job["id"], timeout=180)
    assert job["status"] == "succeeded", job["error"]
    shown = client.cost_model(model_id)
    assert shown["deployment"]["points"] == 1 and shown["deployment"]["own_points"] == 1
    refit = client.refit_cost_model(model_id)
    assert refit["version"] == 2 and refit["refit"]["points"] == 1
    assert refit["refit"]["mape_after"] <= refit["refit"]["mape_before"]
    assert sorted(refit["refit"]["layers_calibrated"]) == ["head", "layers.0"]
    # A profile is not a training job: 404 under /v1/jobs; its own route deletes it.
    assert client.http.delete(f"/v1/jobs/{profile['id']}").status_code == 404
    assert client.http.delete(f"/v1/profiles/{profile['id']}").status_code == 204
    assert client.cost_model(model_id)["id"] == model_id


@pytest.mark.distributed
def test_profile_job_on_redis_and_postgresql(tmp_path: Path) -> None:
    with real_backends() as (broker_url, database_url):
        env = base_env(tmp_path / "data", SPARTAN_BROKER_URL=broker_url,
                       SPARTAN_DATABASE_URL=database_url, SPARTAN_WORKER_THREADS="1")
        serve = Serve(env, tmp_path, workers=0)
        worker = None
        try:
            client = serve.start()
            log = tmp_path / "worker.txt"
            worker = start_worker(env, "p1", log)
            wait_ready(worker, log)
            profile = client.submit_profile(PROFILE)
            profile = wait_profile(client, profile["id"])
            assert profile["worker"].startswith("p1@")
            check_hardware(profile)
            model = client.cost_model(profile["cost_model_id"])
            assert model["fingerprint"] == profile["cost_models"][0]["fingerprint"]
            assert model["source"] == "profile" and model["profile_job_id"] == profile["id"]
        finally:
            serve.stop()
            if worker is not None:
                stop_process(worker)
