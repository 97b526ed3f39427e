"""The client commands (list, cancel, logs, sweep, submit) against the app served by uvicorn on
a free port; job state is driven through the stores (no worker)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spartan_service.cli.main import main
from spartan_service.cli.progress import JobBar
from tests.dashboard.conftest import Served, serve


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from serve(tmp_path_factory.mktemp("cli"))


def run(served: Served, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main([*argv, "--url", served.url])
    out = capsys.readouterr()
    return code, out.out, out.err


def finish(served: Served, job_id: str, accuracy: float, ms: float) -> None:
    report = {"accuracy": {"dense": 0.97, "sparse": accuracy, "final": accuracy},
              "speedup": {"unit": "ms", "batches": [{"batch": 64, "dense_ms": 5.0,
                                                     "sparse_ms": ms}]}}
    served.artifacts.write_bytes(job_id, "report.json", json.dumps(report).encode())
    served.start(job_id)
    assert served.store.finish_job(job_id, "succeeded")


def test_list_and_cancel(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    done = served.new_job(name="cli-done")
    finish(served, done, 0.912, 1.25)
    queued = served.new_job(name="cli-queued")
    code, out, _ = run(served, capsys, "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["ID", "NAME", "STATUS"]
    row = next(line for line in lines if line.startswith(done[:8]))
    assert "cli-done" in row and "succeeded" in row and "91.2%" in row and "1.25" in row
    code, out, _ = run(served, capsys, "list", "--status", "queued", "--json")
    assert code == 0 and queued in [j["id"] for j in json.loads(out)["data"]]

    code, out, err = run(served, capsys, "cancel", queued, done, "f" * 32)
    assert code == 1  # two refusals: finished, and unknown
    assert f"job {queued}: cancelled" in out
    assert "409" in err and "404" in err
    assert served.store.get_job(queued).status == "cancelled"  # type: ignore[union-attr]


def test_logs_prints_records_in_order(served: Served, capsys: pytest.CaptureFixture[str]
                                      ) -> None:
    job = served.new_job(name="cli-logs")
    served.store.append_logs(job, 1, [
        {"level": "INFO", "logger": "spartan_service.worker.runner", "message": "attempt 1"},
        {"level": "ERROR", "logger": "spartan_service.worker.runner",
         "message": "job failed\nTraceback (most recent call last):\nValueError: boom"}])
    code, out, _ = run(served, capsys, "logs", job)
    assert code == 0
    lines = out.splitlines()
    assert "INFO" in lines[0] and "attempt 1" in lines[0]
    assert "ERROR" in lines[1] and lines[-1] == "ValueError: boom"
    code, _, err = run(served, capsys, "logs", "0" * 32)
    assert code == 1 and "404" in err


def test_sweep_command(served: Served, capsys: pytest.CaptureFixture[str], tmp_path: Path
                      ) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"model": {"arch": "mlp"}, "data": {"dataset": "digits"},
                                "training": {"epochs": 1}}))
    code, out, _ = run(served, capsys, "sweep", str(spec), "--budgets", "0.1,0.2",
                       "--name", "cli-sweep")
    assert code == 0
    sweep_id = out.split()[1].rstrip(":")
    assert f"{served.url}/sweeps/{sweep_id}" in out and "2 jobs queued" in out
    with served.client() as http:
        points = http.get(f"/v1/sweeps/{sweep_id}").json()["points"]
    assert [p["budget"] for p in points] == [0.1, 0.2]

    code, _, err = run(served, capsys, "sweep", str(spec), "--budgets", "0.1,7")
    assert code == 1 and "budgets.1" in err


def test_sweep_wait_prints_the_points(served: Served, capsys: pytest.CaptureFixture[str],
                                      tmp_path: Path) -> None:
    # Points already finished when --wait first looks: the table comes at once.
    with served.client() as http:
        sweep = http.post("/v1/sweeps", json={"spec": {"training": {"epochs": 1}},
                                               "budgets": [0.1, 0.3]}).json()
    for p, (acc, ms) in zip(sweep["points"], [(0.9, 1.0), (0.95, 2.0)], strict=True):
        finish(served, p["job_id"], acc, ms)
    from spartan_service.cli.client import Client
    from spartan_service.cli.commands import sweep_table

    with Client(served.url) as client:
        done = client.wait_sweep(sweep["id"], poll_s=0.05, timeout_s=10)
    out = io.StringIO()
    sweep_table(done, out)
    rows = out.getvalue().splitlines()
    assert rows[0].split()[:4] == ["BUDGET", "METHOD", "STATUS", "ACCURACY"]
    assert rows[1].split()[:6] == ["0.1", "spartan", "succeeded", "90.0%", "1", "-"]
    assert "*" in rows[1] and "*" in rows[2]


class NotATerminal(io.StringIO):
    def isatty(self) -> bool:
        return False


def test_progress_is_one_line_per_update_off_a_terminal() -> None:
    out = NotATerminal()
    bar = JobBar("abcdef0123", file=out)
    job: dict[str, Any] = {"status": "running", "progress": {"step": 3, "total_steps": 10,
                                                              "loss": 0.51234}}
    bar.update(job)
    bar.update(job)  # nothing new: no line
    bar.update({"status": "succeeded", "progress": {"step": 10, "total_steps": 10}})
    bar.close()
    assert out.getvalue().splitlines() == [
        "job abcdef01: step 3/10 status=running loss=0.512",
        "job abcdef01: step 10/10 status=succeeded"]
    assert "\r" not in out.getvalue()
