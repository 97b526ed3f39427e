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
With `--embedded` the service runs as `spartan serve` does by default (SQLite, the filesystem
queue); `--closed-loop` makes the status clients poll back to back (saturation: requests/s,
p50, p99, and the API's CPU per request); `--uploads N --upload-mb M` adds the API's peak
resident memory above idle while N uploads of M MiB stream at once; `--only status,uploads`
skips the other phases.
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

from spartan_service.cli.client import Client
from spartan_service.cli.demo import free_port, stop, wait_ready

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


def _proc_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise ValueError(field)


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def closed_loop_status(url: str, job_id: str, clients: int, seconds: float,
                             api_pid: int) -> dict[str, Any]:
    """64 clients (say) each sending its next GET /v1/jobs/{id} as soon as the last one is
    answered: the API's saturation throughput, and its CPU time per request."""
    from benchmarks._http import closed_loop

    host, port = url.rsplit("/", 1)[-1].split(":")
    cpu0 = _cpu_s(api_pid)
    load = await closed_loop(host, int(port), f"/v1/jobs/{job_id}", clients, seconds)
    out = load.summary()
    out["api_cpu_ms_per_request"] = 1e3 * (_cpu_s(api_pid) - cpu0) / max(len(load.latencies), 1)
    out["per_s_per_core"] = out["per_s"] / (os.cpu_count() or 1)
    return out


async def upload_peak(url: str, api_pid: int, count: int, mib: int) -> dict[str, Any]:
    """Peak resident memory of the API above idle while `count` uploads of `mib` MiB each
    stream at once (safetensors of U8 data, generated as sent: the client holds 1 MiB)."""
    boundary = "bench-boundary"
    nbytes = mib << 20

    def body(i: int) -> Any:
        async def parts() -> Any:
            header = (b'{"w": {"dtype": "U8", "shape": [%d], "data_offsets": [0, %d]}}'
                      % (nbytes, nbytes))
            yield (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                   f'filename="w{i}.safetensors"\r\n\r\n').encode()
            yield len(header).to_bytes(8, "little") + header
            chunk = bytes(range(256)) * 4096
            for _ in range(mib):
                yield chunk
            yield f"\r\n--{boundary}--\r\n".encode()
        return parts()

    Path(f"/proc/{api_pid}/clear_refs").write_text("5")  # reset the peak (VmHWM) to now
    idle = _proc_kib(api_pid, "VmRSS")
    t0 = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        responses = await asyncio.gather(*(http.post(
            "/v1/uploads", content=body(i),
            headers={"content-type": f"multipart/form-data; boundary={boundary}"})
            for i in range(count)))
        for r in responses:
            if r.status_code == 201:
                await http.delete(f"/v1/uploads/{r.json()['id']}")
    elapsed = time.perf_counter() - t0
    peak = _proc_kib(api_pid, "VmHWM")
    return {"uploads": count, "mib_each": mib, "seconds": elapsed,
            "accepted": sum(r.status_code == 201 for r in responses),
            "idle_rss_mib": idle / 1024, "peak_rss_mib": peak / 1024,
            "peak_above_idle_mib": (peak - idle) / 1024, "target_above_idle_mib": 300}


def status_phase(client: Client, api_pid: int, args: argparse.Namespace, seconds: float
                 ) -> dict[str, Any]:
    """Status GETs by `args.clients` clients, idle then while a job trains."""
    def measure(job_id: str) -> dict[str, Any]:
        if args.closed_loop:
            return asyncio.run(closed_loop_status(client.url, job_id, args.clients, seconds,
                                                  api_pid))
        return asyncio.run(poll_load(client.url, job_id, args.clients, seconds, args.interval))

    probe = client.submit({**TINY, "queue": "gpu", "name": "status probe"})["id"]
    idle = measure(probe)
    log.info("status GET, idle: %.0f/s, p50 %.1f ms, p99 %.1f ms", idle["per_s"],
             idle["p50_ms"], idle["p99_ms"])
    train = client.submit(TRAINING)["id"]
    while client.job(train)["status"] == "queued":
        time.sleep(0.1)
    time.sleep(2.0)  # past the job's start-up, into training
    busy = measure(train)
    trained = client.job(train)
    log.info("status GET, training: %.0f/s, p50 %.1f ms, p99 %.1f ms", busy["per_s"],
             busy["p50_ms"], busy["p99_ms"])
    client.cancel(train)
    client.cancel(probe)
    client.wait(train, poll_s=0.2, timeout_s=60)
    return {"clients": args.clients, "closed_loop": args.closed_loop,
            "interval_s": None if args.closed_loop else args.interval, "seconds": seconds,
            "idle": idle, "training": busy,
            "training_job_step": trained["progress"].get("step"),
            "p99_training_vs_idle": busy["p99_ms"] / idle["p99_ms"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--embedded", action="store_true",
                        help="SQLite and the filesystem queue (spartan serve's default)")
    parser.add_argument("--closed-loop", action="store_true",
                        help="status clients poll back to back (saturation)")
    parser.add_argument("--uploads", type=int, default=0, help="concurrent uploads (0: none)")
    parser.add_argument("--upload-mb", type=int, default=250)
    parser.add_argument("--only", default="", help="comma-separated phases: latency, "
                        "throughput, status, uploads (default: all that apply)")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--interval", type=float, default=0.5,
                        help="seconds between one client's status requests (default 0.5: "
                        "how often `spartan submit --wait` polls)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    trials, submits, seconds = (3, 40, 5.0) if args.quick else (10, 200, 20.0)
    phases = set(args.only.split(",")) if args.only else {"latency", "throughput", "status"}
    if args.uploads:
        phases.add("uploads")
    load_before = os.getloadavg()[0]

    broker, database_url, db_name = None, None, None
    if not args.embedded:
        import redis

        broker = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
        broker.ping()
        broker.flushdb()
        database_url, db_name = make_database()
    data_dir = Path(tempfile.mkdtemp(prefix="spartan-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPARTAN_")}
    env.update(SPARTAN_DATA_DIR=str(data_dir), SPARTAN_LOG_LEVEL="warning",
               SPARTAN_WORKER_THREADS="1", SPARTAN_MAX_UPLOAD_BYTES=str(1 << 30),
               PYTHONPATH=os.pathsep.join([str(Path.cwd()), env.get("PYTHONPATH", "")]))
    if broker is not None:
        env["SPARTAN_BROKER_URL"] = REDIS_URL
    if database_url:
        env["SPARTAN_DATABASE_URL"] = database_url
    port = free_port()
    log_path = data_dir / "serve.log"
    server = subprocess.Popen([sys.executable, "-m", "spartan_service.cli",
                               "serve", "--port", str(port),
                               "--workers", "1", "--queues", "cpu"], env=env,
                              stdout=log_path.open("wb"),
                              stderr=subprocess.STDOUT)
    result: dict[str, Any] = {
        "benchmark": "service", "quick": args.quick, "cpus": os.cpu_count(),
        "setup": "spartan serve --workers 1 (API + 1 niced worker, 1 torch thread)",
        "store": "postgresql" if db_name else "sqlite",
        "broker": "embedded" if args.embedded else "redis",
    }
    try:
        client = Client(f"http://127.0.0.1:{port}", token="")
        wait_ready(client, server, timeout_s=60)
        while b" ready." not in log_path.read_bytes():  # the worker's Celery banner
            time.sleep(0.2)
        log.info("service on port %d, store %s", port, result["store"])
        if "latency" in phases:
            result["submit_to_running"] = submit_to_running(client, trials)
        if "throughput" in phases:
            result["submit_throughput"] = asyncio.run(submit_throughput(client.url, submits))
            log.info("submit throughput: %.0f jobs/s", result["submit_throughput"]["per_s"])
        if "status" in phases:
            result["status_get"] = status_phase(client, server.pid, args, seconds)
        if "uploads" in phases:
            result["upload_memory"] = asyncio.run(upload_peak(
                client.url, server.pid, args.uploads or 6, args.upload_mb))
            log.info("uploads: peak API RSS %.0f MiB above idle",
                     result["upload_memory"]["peak_above_idle_mib"])
    finally:
        stop(server)
        if broker is not None:
            broker.flushdb()
        if db_name:
            drop_database(db_name)
    # Other processes on the machine skew every figure here: the load says how much.
    result["loadavg_1min_before"] = load_before
    result["loadavg_1min_after"] = os.getloadavg()[0]
    status_get = result.get("status_get", {})
    result["targets"] = {"submit_to_running_s": 0.5, "status_p99_ms": 100.0,
                         "upload_peak_above_idle_mib": 300}
    result["meets"] = {
        "submit_to_running": (result["submit_to_running"]["observed_p50_s"] <= 0.5
                              if "submit_to_running" in result else None),
        "status_p99": (status_get["training"]["p99_ms"] <= 100.0
                       and status_get["training"]["errors"] == 0) if status_get else None,
        "upload_memory": (result["upload_memory"]["peak_above_idle_mib"] <= 300
                          if "upload_memory" in result else None),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
