"""`spartan serve`: the API (uvicorn) plus N embedded worker processes, stopped together.

Workers are `python -m worker` children (so a crash in training never takes the API down);
a child that dies is restarted, and on SIGINT/SIGTERM all of them get SIGTERM, then SIGKILL
after a grace period. On Linux they also get SIGTERM if this process is killed outright.
Workers run niced (lower CPU priority than the API), so the API answers while they train.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from spartan_service.jobs.process import parent_death_signal
from spartan_service.jobs.settings import Settings
from spartan_service.jobs.storage import write_atomic
from spartan_service.jobs.store import JobStore

log = logging.getLogger(__name__)

# Niceness of embedded workers: with 64 clients polling while a job trains on 2 cores, the
# API's p99 drops from ~700 ms to under 100 ms (benchmarks/service.py).
WORKER_NICE = 10


# Tokens guard a public address; shorter ones can be guessed.
MIN_PUBLIC_TOKEN = 16
WORKER_MAIN = ("import sys; sys.path.pop(0); "
               "from spartan_service.worker.main import main; main(sys.argv[1:])")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _worker_preexec() -> Callable[[], None]:
    """Run in each worker child before exec: lower its CPU priority, so that training on the
    same machine leaves the API responsive, and on Linux ask for SIGTERM when this process
    dies (no orphaned workers)."""
    die_with_parent = parent_death_signal(signal.SIGTERM)

    def preexec() -> None:
        os.nice(WORKER_NICE)
        die_with_parent()

    return preexec


class WorkerPool:
    """`count` worker processes, each restarted (after a short pause) if it exits early."""

    def __init__(self, count: int, queues: str = "cpu,gpu", grace_s: float = 15.0,
                 restart_delay_s: float = 2.0) -> None:
        self.count = count
        self.queues = queues
        self.grace_s = grace_s
        self.restart_delay_s = restart_delay_s
        self.procs: list[subprocess.Popen[bytes]] = []
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._watcher = threading.Thread(target=self._watch, name="worker-watch", daemon=True)
        self._preexec = _worker_preexec()

    def command(self, index: int) -> list[str]:
        # Not `python -m worker`: that puts the current directory first on the import path,
        # so a `profile.py` (or any module name) there would be imported instead of the
        # library's. `-c` puts '' there, which the command removes before importing anything.
        return [sys.executable, "-c", WORKER_MAIN, "--queues", self.queues, "--concurrency", "1"]

    def _spawn(self, index: int) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(self.command(index), preexec_fn=self._preexec)
        log.info("started worker %d (pid %d)", index, proc.pid)
        return proc

    def start(self) -> None:
        with self._lock:
            self.procs = [self._spawn(i) for i in range(self.count)]
        if self.count:
            self._watcher.start()

    def _watch(self) -> None:
        while not self._stopping.wait(1.0):
            with self._lock:
                for i, proc in enumerate(self.procs):
                    code = proc.poll()
                    if code is None or self._stopping.is_set():
                        continue
                    log.warning("worker %d (pid %d) exited with %s; restarting", i, proc.pid, code)
                    time.sleep(self.restart_delay_s)
                    if not self._stopping.is_set():
                        self.procs[i] = self._spawn(i)

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            for proc in self.procs:
                if proc.poll() is None:
                    proc.terminate()
            deadline = time.monotonic() + self.grace_s
            for proc in self.procs:
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.warning("worker pid %d did not stop in %.0f s; killing it", proc.pid,
                                self.grace_s)
                    proc.kill()
                    proc.wait()


def wait_for_port_file(port_file: Path, proc: subprocess.Popen[bytes], timeout_s: float) -> int:
    """The port that `proc` (a `spartan serve --port-file port_file` child) bound, once it has
    written it; raises RuntimeError if the child exits first or does not bind in time."""
    deadline = time.monotonic() + timeout_s
    while not port_file.is_file():
        if proc.poll() is not None:
            raise RuntimeError(f"the service exited with code {proc.returncode} at startup")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the service did not bind a port in {timeout_s:.0f} s")
        time.sleep(0.05)
    return int(port_file.read_text())


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def serve(settings: Settings, host: str, port: int, workers: int, insecure: bool,
          queues: str = "cpu,gpu", port_file: Path | None = None) -> int:
    """Port 0 lets the system choose; the port bound is then printed and, with `port_file`,
    written there (how tests find a server without reserving a port another could take)."""
    if not is_loopback(host) and not settings.tokens() and not insecure:
        print(f"refusing to listen on {host} without SPARTAN_API_TOKENS (anyone who can reach it "
              "could run jobs and read results); set tokens, or pass --insecure", file=sys.stderr)
        return 2
    short = sorted(tenant for token, tenant in settings.tokens().items()
                   if len(token) < MIN_PUBLIC_TOKEN)
    if not is_loopback(host) and short and not insecure:
        print(f"refusing to listen on {host}: the token of {', '.join(short)} is shorter than "
              f"{MIN_PUBLIC_TOKEN} characters (guessable); use e.g. `openssl rand -hex 16`, "
              "or pass --insecure", file=sys.stderr)
        return 2
    # Create or migrate the schema once, before workers and the API race to do it.
    JobStore(settings.db_url).close()
    import uvicorn

    # uvicorn re-raises the signal that stopped it; SIGTERM then ends here, cleaning up below.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))  # bound here, by the process that serves it
    bound = int(sock.getsockname()[1])
    print(f"spartan serve: listening on http://{host}:{bound}", flush=True)
    if port_file is not None:
        write_atomic(port_file, f"{bound}\n".encode())  # readers never see half a number
    pool = WorkerPool(workers, queues=queues)
    pool.start()
    try:
        config = uvicorn.Config("spartan_service.service.main:create_app", factory=True,
                                host=host, port=bound,
                                log_level=os.environ.get("SPARTAN_LOG_LEVEL", "info").lower(),
                                timeout_graceful_shutdown=5)
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        pool.stop()
    return 0
