"""`spartan demo`: start the embedded service, run one small job, show where its results are."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from spartan_service.cli.client import Client, ClientError
from spartan_service.cli.progress import JobBar
from spartan_service.cli.serve import wait_for_port_file
from spartan_service.jobs.settings import Settings

DEMO_SPEC: dict[str, Any] = {
    "name": "demo: mlp on digits, 90% sparse",
    "model": {"arch": "mlp"},
    "data": {"dataset": "digits"},
    "sparsity": {"method": "spartan", "budget": 0.1},
    "training": {"epochs": 8},
}


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_ready(client: Client, server: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not client.ready():
        if server.poll() is not None:
            raise ClientError(f"the service exited with code {server.returncode} at startup")
        if time.monotonic() > deadline:
            raise ClientError(f"the service at {client.url} was not ready in {timeout_s:.0f} s")
        time.sleep(0.3)


def stop(server: subprocess.Popen[bytes], grace_s: float = 30.0) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def print_results(client: Client, job: dict[str, Any], settings: Settings) -> None:
    job_id = job["id"]
    print(f"\njob {job_id} {job['status']}" + (f": {job['error']}" if job.get("error") else ""))
    metrics = {k: v for k, v in (job.get("metrics") or {}).items()
               if isinstance(v, (int, float, str))}
    if metrics:
        print("  " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                               for k, v in metrics.items()))
    artifacts = client.artifacts(job_id)
    if artifacts:
        print(f"results in {settings.artifacts_dir / job_id}:")
        width = max(len(a["name"]) for a in artifacts)
        for a in artifacts:
            print(f"  {a['name']:<{width}}  {_size(a['size']):>9}  "
                  f"{client.url}/v1/jobs/{job_id}/artifacts/{a['name']}")
    print(f"job page:  {client.url}/jobs/{job_id}")
    print(f"dashboard: {client.url}/")
    print(f"API docs:  {client.url}/docs")


def demo(settings: Settings, port: int | None, exit_after: bool) -> int:
    host = "127.0.0.1"
    if port is None:
        port = 8000 if port_free(host, 8000) else 0  # 0: serve binds any free port itself
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "demo-service.log"
    port_file = data_dir / "demo-service.port"
    port_file.unlink(missing_ok=True)
    env = dict(os.environ, SPARTAN_LOG_LEVEL=os.environ.get("SPARTAN_LOG_LEVEL", "warning"))
    command = [sys.executable, "-m", "spartan_service.cli",
               "serve", "--host", host, "--port", str(port), "--port-file", str(port_file),
               "--workers", "1"]
    print(f"starting the service (data in {data_dir}, log in {log_path})")
    # The service's and the worker's logs go to a file: the terminal shows the progress bar.
    with log_path.open("ab") as log:
        server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    token = os.environ.get("SPARTAN_TOKEN") or next(iter(settings.tokens()), None)
    code = 0
    try:
        try:
            bound = wait_for_port_file(port_file, server, timeout_s=120)
        except RuntimeError as exc:
            raise ClientError(str(exc)) from None
        print(f"serving on http://{host}:{bound}")
        with Client(f"http://{host}:{bound}", token) as client:
            wait_ready(client, server, timeout_s=120)
            job = client.submit(DEMO_SPEC)
            print(f"submitted job {job['id']}: {DEMO_SPEC['name']}")
            bar = JobBar(job["id"])
            try:
                job = client.wait(job["id"], bar.update)
            finally:
                bar.close()
            print_results(client, job, settings)
            code = 0 if job["status"] == "succeeded" else 1
            if not exit_after:
                print("\nserving until Ctrl-C")
                server.wait()
    except KeyboardInterrupt:
        print("\nstopping")
    except ClientError as exc:
        print(f"error: {exc} (service log: {log_path})", file=sys.stderr)
        code = 1
    finally:
        stop(server)
    return code
