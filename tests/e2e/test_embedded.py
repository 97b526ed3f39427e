"""The embedded default end to end: `spartan serve --workers 1` (SQLite, filesystem broker, one
worker process) driven over HTTP and through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import REPO, Serve, base_env, children_of, wait_for

SPEC = {"model": {"arch": "mlp"}, "data": {"dataset": "digits"},
        "sparsity": {"method": "spartan", "budget": 0.1}, "training": {"epochs": 1}}
RESULTS = {"model.safetensors", "model.sparse.safetensors", "masks.safetensors", "report.json",
           "metrics.jsonl"}


def write_plugin(folder: Path) -> Path:
    """An installed-looking distribution whose `spartan.models` factory always raises."""
    folder.mkdir()
    (folder / "e2e_plugins.py").write_text(textwrap.dedent("""
        def exploding(input_shape, num_classes, reason="no reason"):
            raise RuntimeError(f"factory exploded: {reason}")
    """))
    info = folder / "e2e_plugins-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: e2e-plugins\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[spartan.models]\nexploding = e2e_plugins:exploding\n")
    return folder


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    root = tmp_path_factory.mktemp("embedded")
    env = base_env(root / "data", extra_path=write_plugin(root / "plugins"))
    server = Serve(env, root, workers=1)
    server.start()
    yield server
    server.stop()


def cli(serve: Serve, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    assert serve.client is not None
    return subprocess.run([sys.executable, "-m", "spartan_service.cli",
                           *args, "--url", serve.client.url],
                          cwd=REPO, env=serve.env, capture_output=True, text=True,
                          timeout=timeout)


def test_contract_job_succeeds_and_downloads(serve: Serve, tmp_path: Path) -> None:
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(SPEC))
    submitted = cli(serve, "submit", str(spec_file), "--wait")
    assert submitted.returncode == 0, submitted.stderr + serve.log_text()
    job_id = submitted.stdout.split()[1]
    assert f"job {job_id} succeeded" in submitted.stdout
    assert "step" in submitted.stderr  # the progress bar

    assert serve.client is not None
    job = serve.client.job(job_id)
    assert job["status"] == "succeeded" and job["error"] is None and job["attempts"] == 1
    assert job["progress"]["step"] == job["progress"]["total_steps"] > 0
    assert job["started_at"] <= job["finished_at"] and job["worker"]

    status = cli(serve, "status", job_id)
    assert json.loads(status.stdout)["status"] == "succeeded"
    out = tmp_path / "results"
    downloaded = cli(serve, "download", job_id, "-o", str(out))
    assert downloaded.returncode == 0, downloaded.stderr
    listed = {a["name"]: a["size"] for a in serve.client.artifacts(job_id)}
    assert RESULTS <= set(listed)
    for name, size in listed.items():
        assert (out / name).stat().st_size == size
    report = json.loads((out / "report.json").read_text())
    assert report  # the worker's report; its content is tested in tests/worker


def test_job_whose_model_factory_raises_ends_failed(serve: Serve) -> None:
    assert serve.client is not None
    spec = {**SPEC, "model": {"arch": "exploding", "kwargs": {"reason": "bad layout"}}}
    job = serve.client.submit(spec)
    job = wait_for(serve.client, job["id"], timeout=60)
    assert job["status"] == "failed"
    assert "factory exploded: bad layout" in job["error"]
    assert job["finished_at"] is not None


def test_running_job_is_cancelled(serve: Serve) -> None:
    assert serve.client is not None
    job = serve.client.submit({**SPEC, "training": {"epochs": 500}})
    wait_for(serve.client, job["id"], ("running",), timeout=60, min_step=1)
    cancelled = serve.client.cancel(job["id"])
    assert cancelled["cancel_requested"] is True
    job = wait_for(serve.client, job["id"], timeout=15)
    assert job["status"] == "cancelled"
    assert 0 < job["progress"]["step"] < job["progress"]["total_steps"]


def test_embedded_workers_run_niced(serve: Serve) -> None:
    """Training must not starve the API of CPU: serve lowers its workers' priority."""
    assert serve.proc is not None
    workers = children_of(serve.proc.pid)
    assert workers

    def nice(pid: int) -> int:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])

    assert nice(serve.proc.pid) == 0
    assert all(nice(pid) == 10 for pid in workers)


@pytest.mark.slow
def test_store_survives_an_api_restart(serve: Serve) -> None:
    assert serve.client is not None
    early = serve.client.submit({**SPEC, "name": "cancelled before the restart"})["id"]
    serve.client.cancel(early)
    wait_for(serve.client, early, timeout=30)
    before = serve.client.request("GET", "/v1/jobs")
    old = {j["id"]: j["status"] for j in before["data"]}
    serve.stop()
    # Restarted without workers, a job submitted now stays queued across the next restart.
    job_id = serve.start(workers=0).submit(SPEC)["id"]
    serve.stop()
    client = serve.start(workers=1)
    after = client.request("GET", "/v1/jobs")
    assert after["count"] == before["count"] + 1
    assert {j["id"]: j["status"] for j in after["data"] if j["id"] in old} == old
    assert wait_for(client, job_id, timeout=90)["status"] == "succeeded"



def test_sweep_end_to_end_through_the_cli(serve: Serve, tmp_path: Path) -> None:
    """A sweep over two budgets plus a dense point, trained by the real worker: every point
    gets its accuracy and measured latency, and the frontier is the one those figures give."""
    from spartan_service.jobs.sweeps import pareto

    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps({**SPEC, "name": "e2e sweep"}))
    swept = cli(serve, "sweep", str(spec_file), "--budgets", "0.05,0.3", "--methods",
                "spartan,dense", "--wait", timeout=300)
    assert swept.returncode == 0, swept.stdout + swept.stderr + serve.log_text()
    sweep_id = swept.stdout.split()[1].rstrip(":")
    assert serve.client is not None
    sweep = serve.client.sweep(sweep_id)
    assert sweep["status"] == "succeeded"
    points = sweep["points"]
    assert [(p["method"], p["budget"]) for p in points] == [
        ("spartan", 0.05), ("spartan", 0.3), ("dense", None)]
    for p in points:
        assert 0.0 < p["accuracy"] <= 1.0 and p["measured_latency"] > 0, p
    assert [p["pareto"] for p in points] == pareto(
        [(p["accuracy"], p["measured_latency"]) for p in points])
    assert any(p["pareto"] for p in points)
    assert sweep["dense"]["job_id"] == points[2]["job_id"]
    logs = cli(serve, "logs", points[0]["job_id"])  # the worker's log, stored with the job
    assert logs.returncode == 0 and "attempt 1" in logs.stdout, logs.stdout + logs.stderr
    table = swept.stdout.splitlines()
    assert table[1].split()[0] == "BUDGET"
    assert table[2].split()[:3] == ["0.05", "spartan", "succeeded"]
