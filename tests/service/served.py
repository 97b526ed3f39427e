"""The API served by uvicorn in a process of its own, for tests that need what TestClient
cannot show: memory and CPU of the serving process, requests truly in parallel."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def served(data_dir: Path, **env: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """(base URL, process) of an API on a free port; SPARTAN_* from the environment dropped."""
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SPARTAN_")}
    environ.update(SPARTAN_DATA_DIR=str(data_dir), **env)
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "spartan_service.service.main:create_app",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"], env=environ)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            raise AssertionError("the API did not start")
        yield url, proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


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
