"""Real processes for the end-to-end tests: `spartan serve` (API + embedded workers) and
`python -m spartan_service.worker`, on free loopback ports, with their data in tmp directories."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from spartan_service.cli.client import Client
from spartan_service.cli.serve import wait_for_port_file

REPO = Path(__file__).resolve().parents[2]
TERMINAL = ("succeeded", "failed", "cancelled")


def base_env(data_dir: Path, extra_path: Path | None = None, **values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPARTAN_")}
    paths = [str(REPO), *([str(extra_path)] if extra_path else []), env.get("PYTHONPATH", "")]
    env.update(PYTHONPATH=os.pathsep.join(p for p in paths if p),
               SPARTAN_DATA_DIR=str(data_dir), SPARTAN_LOG_LEVEL="warning",
               # Small, fast heartbeats: nothing here waits a minute for a lost worker.
               SPARTAN_PROGRESS_INTERVAL_S="0.5", **values)
    return env


def children_of(pid: int) -> list[int]:
    """Every live descendant of pid (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        kids = [p for p, pp in parents.items() if pp == current]
        found += kids
        frontier += kids
    return found


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 40.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


class Serve:
    """`python -m spartan_service.cli serve` (the `spartan serve` command) as a child process."""

    def __init__(self, env: dict[str, str], log_dir: Path, workers: int) -> None:
        self.env, self.log_dir, self.workers = env, log_dir, workers
        self.proc: subprocess.Popen[bytes] | None = None
        self.client: Client | None = None
        self.starts = 0

    def start(self, workers: int | None = None, timeout: float = 90.0) -> Client:
        self.workers = self.workers if workers is None else workers
        self.starts += 1
        log = (self.log_dir / f"serve-{self.starts}.log").open("wb")
        port_file = self.log_dir / f"serve-{self.starts}.port"
        # Port 0: serve binds a free port itself and says which (no port reserved, then lost).
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "spartan_service.cli", "serve", "--port", "0", "--port-file",
             str(port_file), "--workers", str(self.workers)],
            cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        try:
            port = wait_for_port_file(port_file, self.proc, timeout)
        except RuntimeError as exc:
            raise AssertionError(f"{exc}; see {log.name}") from None
        self.client = Client(f"http://127.0.0.1:{port}", token="")
        while not self.client.ready():
            assert self.proc.poll() is None, f"serve exited early; see {log.name}"
            assert time.monotonic() < deadline, "serve was not ready in time"
            time.sleep(0.2)
        return self.client

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.client is not None:
            self.client.close()
        pid = self.proc.pid
        descendants = children_of(pid)
        assert stop_process(self.proc) == 0
        deadline = time.monotonic() + 10  # grandchildren are reaped by init, a moment later
        while left := [p for p in descendants if Path(f"/proc/{p}").exists()]:
            assert time.monotonic() < deadline, f"worker processes left behind: {left}"
            time.sleep(0.05)
        self.proc = None

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("*.log")))


def wait_for(client: Client, job_id: str, statuses: tuple[str, ...] = TERMINAL,
             timeout: float = 90.0, min_step: int = 0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = client.job(job_id)
        if job["status"] in statuses and (job["progress"].get("step") or 0) >= min_step:
            return job
        if job["status"] in TERMINAL and job["status"] not in statuses:
            raise AssertionError(f"job ended {job['status']}: {job['error']}")
        if time.monotonic() > deadline:
            raise AssertionError(f"job still {job['status']} after {timeout} s: {job}")
        time.sleep(0.2)
