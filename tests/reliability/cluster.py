"""The distributed setup as real processes, for the crash-recovery tests and
`benchmarks.recovery`: a redis-server of its own on a free port (so it can be killed and
restarted), a PostgreSQL database created for the run, `spartan serve --workers 0`, and
`python -m spartan_service.worker` processes that can be SIGKILLed and replaced.

PostgreSQL is the one on 127.0.0.1 (SPARTAN_TEST_POSTGRES_URL). When redis-server or PostgreSQL
is missing, `Cluster.start` raises Unavailable.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

from spartan_service.cli.client import Client
from tests.e2e.conftest import Serve, base_env
from tests.e2e.test_distributed import POSTGRES_URL, start_worker
from tests.ports import BIND_RETRIES, address_in_use, unused_port

HEARTBEAT_TIMEOUT_S = 4.0
MAX_ATTEMPTS = 2
# 4600 steps (digits: 23 an epoch; ~7 s at ~650 steps/s here): killed mid-job for sure.
LONG_SPEC: dict[str, Any] = {
    "model": {"arch": "mlp", "kwargs": {"hidden": [32]}}, "data": {"dataset": "digits"},
    "sparsity": {"method": "spartan", "budget": 0.25},
    "training": {"epochs": 200, "checkpoint_every": 50},
}


class Unavailable(RuntimeError):
    """redis-server or PostgreSQL cannot be had on this machine."""


def write_killer_plugin(folder: Path) -> Path:
    """An installed-looking distribution whose `spartan.models` factory `worker_killer` builds
    a model whose forward SIGKILLs the whole worker: the job process' parent (the worker's main
    process, which takes its job processes with it)."""
    folder.mkdir(parents=True)
    (folder / "reliability_plugins.py").write_text(textwrap.dedent("""
        import os
        import signal

        import torch


        class Killer(torch.nn.Module):
            def __init__(self, n_in, n_out):
                super().__init__()
                self.fc = torch.nn.Linear(n_in, n_out)

            def forward(self, x):
                parent = os.getppid()
                with open(f"/proc/{parent}/cmdline", "rb") as f:
                    is_worker = b"worker" in f.read()
                # Never the test runner: only a worker's main process, else this process.
                os.kill(parent if is_worker else os.getpid(), signal.SIGKILL)
                return self.fc(x.flatten(1))


        def worker_killer(input_shape, num_classes):
            n_in = 1
            for d in input_shape:
                n_in *= d
            return Killer(n_in, num_classes)
    """))
    info = folder / "reliability_plugins-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: reliability-plugins\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[spartan.models]\nworker_killer = reliability_plugins:worker_killer\n")
    return folder


class Redis:
    """redis-server without persistence on a free loopback port; stop() loses everything.

    redis-server binds the port it is told (tests/ports.py): a port taken meanwhile is replaced
    on the first start; a restart keeps it, since the workers' broker URL names it."""

    def __init__(self, log: Path) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise Unavailable("redis-server is not installed")
        self.exe, self.log, self.port = exe, log, unused_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        self.starts += 1
        for attempt in range(1, BIND_RETRIES + 1):
            try:
                return self._start(timeout)
            except Unavailable as exc:
                if self.starts > 1 or attempt == BIND_RETRIES or not address_in_use(str(exc)):
                    raise
                self.port = unused_port()

    def _start(self, timeout: float) -> None:
        import redis

        self.log.touch()
        offset = self.log.stat().st_size
        self.proc = subprocess.Popen(
            [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no"],
            stdout=self.log.open("ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            try:
                redis.Redis(port=self.port, socket_connect_timeout=0.5).ping()
                return
            except redis.RedisError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.kill()
                    said = self.log.read_bytes()[offset:].decode(errors="replace")
                    raise Unavailable(f"redis-server did not start: {said}") from None
                time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Cluster:
    """API, workers, Redis and a fresh PostgreSQL database under `root`."""

    def __init__(self, root: Path, heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S,
                 max_attempts: int = MAX_ATTEMPTS) -> None:
        self.root = root
        self.redis = Redis(root / "redis.log")
        self.db_name = f"spartan_rel_{uuid.uuid4().hex[:12]}"
        self.admin_url = POSTGRES_URL.replace("+psycopg", "")
        self.database_url = re.sub(r"/[^/]*$", f"/{self.db_name}", POSTGRES_URL)
        self.db_created = False
        plugins = write_killer_plugin(root / "plugins")
        self.env = base_env(root / "data", extra_path=plugins,
                            SPARTAN_BROKER_URL=self.redis.url,
                            SPARTAN_DATABASE_URL=self.database_url,
                            SPARTAN_WORKER_THREADS="1",
                            SPARTAN_HEARTBEAT_TIMEOUT_S=str(heartbeat_timeout_s),
                            SPARTAN_MAX_ATTEMPTS=str(max_attempts))
        self.serve = Serve(self.env, root, workers=0)
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.started = 0

    @property
    def client(self) -> Client:
        assert self.serve.client is not None
        return self.serve.client

    def start(self) -> Client:
        import psycopg

        try:
            with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=3) as conn:
                conn.execute(f'CREATE DATABASE "{self.db_name}"')
        except psycopg.Error as exc:
            raise Unavailable(f"PostgreSQL at {self.admin_url} is unreachable: {exc}") from None
        self.db_created = True
        self.redis.start()
        self.env["SPARTAN_BROKER_URL"] = self.redis.url  # its port may have changed
        return self.serve.start()  # migrates the fresh database before any worker starts

    def add_worker(self) -> str:
        """Start a worker (not waiting for it); returns its name."""
        self.started += 1
        name = f"w{self.started}"
        self.workers[name] = start_worker(self.env, name, self.log(name))
        return name

    def log(self, name: str) -> Path:
        return self.root / f"worker-{name}.txt"

    def wait_ready(self, *names: str, timeout: float = 60.0) -> None:
        self.wait_logged(" ready.", dict.fromkeys(names, 0), timeout)

    def log_counts(self, text: str) -> dict[str, int]:
        """How often each live worker has logged `text` so far."""
        return {n: self.log(n).read_text(errors="replace").count(text) for n in self.live()}

    def wait_logged(self, text: str, before: dict[str, int], timeout: float = 60.0) -> None:
        """Until each worker named in `before` has logged `text` more often than it had then."""
        deadline = time.monotonic() + timeout
        for name, seen in before.items():
            while self.log(name).read_text(errors="replace").count(text) <= seen:
                assert self.workers[name].poll() is None, self.logs()
                assert time.monotonic() < deadline, f"worker {name}: no {text!r}\n{self.logs()}"
                time.sleep(0.1)

    def live(self) -> list[str]:
        return [n for n, p in self.workers.items() if p.poll() is None]

    def running_on(self, job: dict[str, Any]) -> str:
        """The name of the worker a running job's record names (`w3@host/pid/run`)."""
        return str(job["worker"]).split("@", 1)[0]

    def kill_worker(self, name: str) -> None:
        proc = self.workers[name]
        proc.send_signal(signal.SIGKILL)  # its job processes follow (PR_SET_PDEATHSIG)
        proc.wait()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted(self.root.glob("*.txt")) + sorted(
                             self.root.glob("*.log")))

    def stop(self) -> None:
        for name in self.live():
            self.kill_worker(name)
        try:
            self.serve.stop()
        finally:
            self.redis.kill()
            if self.db_created:
                import psycopg

                with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=3) as c:
                    c.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')

