"""The API served by uvicorn in a process of its own, for tests that need what TestClient
cannot show: memory and CPU of the serving process, requests truly in parallel."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from spartan_service.cli.serve import wait_for_port_file


@contextmanager
def served(data_dir: Path, **env: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """(base URL, process) of `spartan serve --workers 0` (the API alone, on a port it binds
    itself); SPARTAN_* from the environment dropped."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SPARTAN_")}
    environ.update(SPARTAN_DATA_DIR=str(data_dir), SPARTAN_LOG_LEVEL="warning", **env)
    port_file = data_dir / "serve.port"
    proc = subprocess.Popen(
        [sys.executable, "-m", "spartan_service.cli", "serve", "--port", "0", "--port-file",
         str(port_file), "--workers", "0"], env=environ)
    try:
        url = f"http://127.0.0.1:{wait_for_port_file(port_file, proc, timeout_s=60)}"
        deadline = time.monotonic() + 60
        while not ready(url):
            assert proc.poll() is None, "the API exited at startup"
            assert time.monotonic() < deadline, "the API did not start"
            time.sleep(0.1)
        yield url, proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz").status_code == 200
    except httpx.HTTPError:
        return False


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out += [int(c) for c in text]
    return out
