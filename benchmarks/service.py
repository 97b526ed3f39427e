"""Service latency and throughput on this machine, over loopback.

    python -m benchmarks.service [--quick]

Runs `spartan serve --workers 1` (the API and one worker process, niced as serve runs it, on
this machine) on Redis (127.0.0.1:6379, db 12, flushed) with a PostgreSQL job store (a
database created for the run and dropped after; the embedded SQLite store if PostgreSQL is
unreachable), then measures:
- submit-to-running: POST /v1/jobs until the job is running, with an idle worker waiting
  (its last job ended 6 s before); client-observed (polling every 10 ms) and from the store's
  created_at / started_at; also back to back (submitted as the previous job ends);
- submit throughput: POSTs by 8 concurrent clients to a queue no worker serves (then cancelled);
- status GET latency with 64 concurrent clients, each polling GET /v1/jobs/{id} at most every
  --interval seconds (bounded, default 0.5 s: as `spartan submit --wait` polls), first with
  the machine idle (the baseline), then while a job trains in the worker on the same machine.
Progress on stderr; one JSON object on the last stdout line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from service.client import Client
from service.demo import free_port, stop, wait_ready

log = logging.getLogger("benchmarks.service")
REDIS_URL = os.environ.get("SPARTAN_BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
POSTGRES_URL = os.environ.get("SPARTAN_BENCH_POSTGRES_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/test")
TINY = {"model": {"arch": "mlp", "kwargs": {"hidden": [32]}}, "data": {"dataset": "digits"},
        "sparsity": {"method": "spartan", "budget": 0.2}, "training": {"epochs": 1}}
TRAINING = {"model": {"arch": "mlp", "kwargs": {"hidden": [512, 256]}},
            "data": {"dataset": "digits"}, "sparsity": {"method": "spartan", "budget": 0.1},
            "training": {"epochs": 1000}}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def stamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def make_database() -> tuple[str | None, str | None]:
    """(SQLAlchemy URL of a fresh database, its name), or (None, None) for SQLite."""
    import psycopg

    name = f"spartan_bench_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(POSTGRES_URL.replace("+psycopg", ""), autocommit=True,
                             connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        log.warning("PostgreSQL unreachable (%s); using SQLite", exc)
        return None, None
    return POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}", name


def drop_database(name: str) -> None:
    import psycopg

    with psycopg.connect(POSTGRES_URL.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def time_to_running(client: Client, name: str) -> tuple[float, float]:
    """(client-observed, store-recorded) seconds from POST to running; waits for the end."""
    t0 = time.perf_counter()
    job = client.submit({**TINY, "name": name})
    while (job := client.job(job["id"]))["status"] == "queued":
        time.sleep(0.01)
    observed = time.perf_counter() - t0
    recorded = stamp(job["started_at"]) - stamp(job["created_at"])
    client.wait(job["id"], poll_s=0.05)
    return observed, recorded


def submit_to_running(client: Client, trials: int, idle_s: float = 6.0) -> dict[str, Any]:
    """Idle worker: its previous job ended idle_s before. Back to back: right after it, while
    the worker replaces the job's process (one fresh process per job)."""
    idle, recorded, back = [], [], []
    for i in range(trials):
        time.sleep(idle_s)
        observed, stored = time_to_running(client, f"latency {i}")
        idle.append(observed)
        recorded.append(stored)
        back.append(time_to_running(client, f"back to back {i}")[0])
        log.info("submit-to-running %d: idle %.3f s (%.3f s in the store), back to back "
                 "%.3f s", i, observed, stored, back[-1])
    return {"trials": trials, "idle_s": idle_s,
            "observed_p50_s": statistics.median(idle), "observed_max_s": max(idle),
            "store_p50_s": statistics.median(recorded), "store_max_s": max(recorded),
            "back_to_back_p50_s": statistics.median(back), "back_to_back_max_s": max(back)}


async def submit_throughput(url: str, count: int, concurrency: int = 8) -> dict[str, Any]:
    spec = {**TINY, "queue": "gpu"}  # no worker serves gpu here: nothing runs
    ids: list[str] = []
    errors = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal errors
        while not queue.empty():
            queue.get_nowait()
            r = await http.post("/v1/jobs", json=spec)
            if r.status_code == 202:
                ids.append(r.json()["id"])
            else:
                errors += 1

    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
        for job_id in ids:
            await http.post(f"/v1/jobs/{job_id}/cancel")
    return {"jobs": count, "concurrency": concurrency, "per_s": count / elapsed,
            "errors": errors}


async def poll_load(url: str, job_id: str, clients: int, seconds: float, interval: float
                    ) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async with httpx.AsyncClient(base_url=url, timeout=10, limits=limits) as http:
        async def one(k: int) -> None:
            nonlocal errors
            await asyncio.sleep(interval * k / clients)  # spread the clients over an interval
            end = time.perf_counter() + seconds
            while (t0 := time.perf_counter()) < end:
                try:
                    r = await http.get(f"/v1/jobs/{job_id}")
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                dt = time.perf_counter() - t0
                latencies.append(dt)
                errors += not ok
                await asyncio.sleep(max(0.0, interval - dt))

        await asyncio.gather(*(one(k) for k in range(clients)))
    return {"requests": len(latencies), "errors": errors, "per_s": len(latencies) / seconds,
            "p50_ms": 1e3 * pct(latencies, 50), "p99_ms": 1e3 * pct(latencies, 99),
            "max_ms": 1e3 * max(latencies)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--interval", type=float, default=0.5,
                        help="seconds between one client's status requests (default 0.5: "
                        "how often `spartan submit --wait` polls)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    trials, submits, seconds = (3, 40, 5.0) if args.quick else (10, 200, 20.0)
    load_before = os.getloadavg()[0]

    import redis

    broker = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    broker.ping()
    broker.flushdb()
    database_url, db_name = make_database()
    data_dir = Path(tempfile.mkdtemp(prefix="spartan-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPARTAN_")}
    env.update(SPARTAN_DATA_DIR=str(data_dir), SPARTAN_BROKER_URL=REDIS_URL,
               SPARTAN_LOG_LEVEL="warning", SPARTAN_WORKER_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(Path.cwd()), env.get("PYTHONPATH", "")]))
    if database_url:
        env["SPARTAN_DATABASE_URL"] = database_url
    port = free_port()
    log_path = data_dir / "serve.log"
    server = subprocess.Popen([sys.executable, "-m", "service", "serve", "--port", str(port),
                               "--workers", "1", "--queues", "cpu"], env=env,
                              stdout=log_path.open("wb"),
                              stderr=subprocess.STDOUT)
    try:
        client = Client(f"http://127.0.0.1:{port}", token="")
        wait_ready(client, server, timeout_s=60)
        while b" ready." not in log_path.read_bytes():  # the worker's Celery banner
            time.sleep(0.2)
        log.info("service on port %d, store %s", port, "postgresql" if db_name else "sqlite")
        latency = submit_to_running(client, trials)
        throughput = asyncio.run(submit_throughput(client.url, submits))
        log.info("submit throughput: %.0f jobs/s", throughput["per_s"])
        probe = client.submit({**TINY, "queue": "gpu", "name": "status probe"})["id"]
        idle = asyncio.run(poll_load(client.url, probe, args.clients, seconds, args.interval))
        log.info("status GET, idle: p50 %.1f ms, p99 %.1f ms", idle["p50_ms"], idle["p99_ms"])
        train = client.submit(TRAINING)["id"]
        while client.job(train)["status"] == "queued":
            time.sleep(0.1)
        time.sleep(2.0)  # past the job's start-up, into training
        busy = asyncio.run(poll_load(client.url, train, args.clients, seconds, args.interval))
        trained = client.job(train)
        log.info("status GET, training: p50 %.1f ms, p99 %.1f ms", busy["p50_ms"],
                 busy["p99_ms"])
        client.cancel(train)
        client.cancel(probe)
        client.wait(train, poll_s=0.2, timeout_s=60)
    finally:
        stop(server)
        broker.flushdb()
        if db_name:
            drop_database(db_name)
    result = {
        "benchmark": "service", "quick": args.quick, "cpus": os.cpu_count(),
        # Other processes on the machine skew every figure here: the load says how much.
        "loadavg_1min_before": load_before, "loadavg_1min_after": os.getloadavg()[0],
        "setup": "spartan serve --workers 1 (API + 1 niced worker, 1 torch thread)",
        "store": "postgresql" if db_name else "sqlite", "broker": "redis",
        "submit_to_running": latency, "submit_throughput": throughput,
        "status_get": {"clients": args.clients, "interval_s": args.interval,
                       "seconds": seconds, "idle": idle, "training": busy,
                       "training_job_step": trained["progress"].get("step")},
        "ratios": {"status_p99_training_vs_idle": busy["p99_ms"] / idle["p99_ms"],
                   "status_p50_training_vs_idle": busy["p50_ms"] / idle["p50_ms"]},
        "targets": {"submit_to_running_s": 0.5, "status_p99_ms": 100.0},
        "meets": {"submit_to_running": latency["observed_p50_s"] <= 0.5,
                  "status_p99": busy["p99_ms"] <= 100.0 and busy["errors"] == 0},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
