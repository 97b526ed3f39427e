"""Job-to-job latency and shutdown time of the embedded worker (filesystem broker, SQLite).

    python -m benchmarks.job_latency [--jobs N] [--no-baseline] [--no-serve]

Per variant, a `python -m worker --queues cpu` process on a fresh data directory; once it is
ready, N tiny jobs (1 epoch of a 16-unit MLP on digits) are stored and enqueued at once, and
the job records give:
- gap_s: from one job's finished_at to the next one's started_at (jobs in start order), the
  time a queued job waits for the worker to take it after the previous one ended;
- first_start_s: from the first job's creation to its start (an idle worker's pick-up time);
then, after 1 s idle, shutdown_s: from SIGTERM to the worker's exit.

Variants: "current" (this code) and "stock_celery", the same worker with Celery's own prefork
pool, kombu's filesystem transport waits (2 s per blocking-loop turn) and a normal interpreter
exit: what the worker ran before. With serve (default), also the idle shutdown of
`spartan serve --workers 1` (SIGTERM to exit). Progress on stderr; one JSON object on the last
stdout line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from spartan_service.jobs.models import Job
from spartan_service.jobs.queue import enqueue_job, make_celery
from spartan_service.jobs.settings import Settings
from spartan_service.jobs.spec import JobSpec
from spartan_service.jobs.store import JobStore

log = logging.getLogger("benchmarks.job_latency")
REPO = Path(__file__).resolve().parents[1]
SPEC = {"model": {"arch": "mlp", "kwargs": {"hidden": [16]}}, "data": {"dataset": "digits"},
        "sparsity": {"method": "dense"}, "training": {"epochs": 1}}
# The worker as it was: Celery's prefork pool, the 2 s transport wait, a full interpreter exit.
STOCK = ("import sys; from celery.concurrency import prefork; "
         "import spartan_service.jobs.queue as q; "
         "import spartan_service.worker.main as m; m.JobTaskPool = prefork.TaskPool; "
         "q.EmbeddedTransport.max_wait_s = 2.0; m.exit_now = lambda code=0: None; "
         "m.main(sys.argv[1:])")
TARGET_GAP_S, TARGET_SHUTDOWN_S = 0.5, 2.0


def worker_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPARTAN_")}
    env.update(SPARTAN_DATA_DIR=str(data_dir), SPARTAN_WORKER_THREADS="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p))
    return env


def wait_ready(proc: subprocess.Popen[bytes], log_file: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while b" ready." not in log_file.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"worker did not start:\n{log_file.read_text()[-3000:]}")
        time.sleep(0.05)


def gaps(jobs: list[Job]) -> list[float]:
    """Seconds from each job's end to the next one's start, in start order."""
    ordered = sorted(jobs, key=lambda j: j.started_at or j.created_at)
    return [(b.started_at - a.finished_at).total_seconds()
            for a, b in zip(ordered, ordered[1:], strict=False)
            if a.finished_at is not None and b.started_at is not None]


def stop(proc: subprocess.Popen[bytes], timeout: float = 60) -> tuple[float, int]:
    """SIGTERM; seconds until the process exits, and its exit code."""
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait()
    return time.monotonic() - start, code


def measure_worker(root: Path, variant: str, n_jobs: int) -> dict[str, Any]:
    data = root / variant
    data.mkdir()
    settings = Settings(data_dir=data, database_url=None, broker_url=None)
    store = JobStore(settings.db_url)
    app = make_celery(settings)
    log_file = data / "worker.log"
    entry = ["-c", STOCK] if variant == "stock_celery" else ["-m", "spartan_service.worker"]
    with log_file.open("wb") as out:
        proc = subprocess.Popen([sys.executable, *entry, "--queues", "cpu"], cwd=REPO,
                                env=worker_env(data), stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_ready(proc, log_file)
        spec = JobSpec.model_validate(SPEC).model_dump(mode="json")
        ids = [store.create_job("bench", spec, "cpu", f"j{i}").id for i in range(n_jobs)]
        for job_id in ids:
            enqueue_job(job_id, "cpu", app=app)
        deadline = time.monotonic() + 300
        while True:
            jobs = [store.get_job(i) for i in ids]
            if all(j is not None and j.status in ("succeeded", "failed") for j in jobs):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"jobs did not finish:\n{log_file.read_text()[-3000:]}")
            time.sleep(0.05)
        time.sleep(1.0)  # idle
        shutdown, code = stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        store.close()
    done = [j for j in jobs if j is not None]
    failed = [j.error for j in done if j.status != "succeeded"]
    if failed:
        raise RuntimeError(f"{variant}: jobs failed: {failed}")
    between = gaps(done)
    first = min(done, key=lambda j: j.started_at or j.created_at)
    assert first.started_at is not None
    pids = {str(j.worker).split("/")[1] for j in done}
    result = {
        "gap_s": [round(g, 3) for g in between],
        "gap_median_s": round(statistics.median(between), 3),
        "gap_max_s": round(max(between), 3),
        "first_start_s": round((first.started_at - first.created_at).total_seconds(), 3),
        "job_processes": len(pids),
        "shutdown_s": round(shutdown, 2), "exit_code": code,
    }
    log.info("%s: %s", variant, result)
    return result


def measure_serve(root: Path) -> dict[str, Any]:
    """Idle `spartan serve --workers 1`: SIGTERM to exit, once its worker is ready."""
    from tests.e2e.conftest import Serve, base_env

    env = base_env(root / "serve-data")
    env["SPARTAN_LOG_LEVEL"] = "info"  # the worker's "ready." line
    server = Serve(env, root, workers=1)
    client = server.start()
    client.close()
    assert server.proc is not None
    try:
        wait_ready(server.proc, root / "serve-1.log")
        time.sleep(1.0)
        shutdown, code = stop(server.proc)
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()
    result = {"shutdown_s": round(shutdown, 2), "exit_code": code}
    log.info("serve: %s", result)
    return result


def run(root: Path, n_jobs: int, baseline: bool, serve: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"benchmark": "job_latency", "broker": "filesystem",
                           "store": "sqlite", "jobs": n_jobs, "cpus": os.cpu_count()}
    out["current"] = measure_worker(root, "current", n_jobs)
    if baseline:
        out["stock_celery"] = measure_worker(root, "stock_celery", n_jobs)
    if serve:
        out["serve_idle"] = measure_serve(root)
    shutdowns = [out["current"]["shutdown_s"]] + (
        [out["serve_idle"]["shutdown_s"]] if serve else [])
    out["target_gap_s"], out["target_shutdown_s"] = TARGET_GAP_S, TARGET_SHUTDOWN_S
    out["meets_target"] = (out["current"]["gap_max_s"] <= TARGET_GAP_S
                           and max(shutdowns) <= TARGET_SHUTDOWN_S)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.job_latency",
                                     description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=6, help="jobs submitted at once (default 6)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the stock Celery worker")
    parser.add_argument("--no-serve", action="store_true",
                        help="skip the `spartan serve` shutdown")
    args = parser.parse_args(argv)
    if args.jobs < 2:
        parser.error("--jobs must be at least 2")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="spartan-job-latency-") as tmp:
        result = run(Path(tmp), args.jobs, not args.no_baseline, not args.no_serve)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
