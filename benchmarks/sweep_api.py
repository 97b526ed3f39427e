"""Latency of the dashboard's JSON for a sweep: `GET /v1/sweeps/{id}` with N finished points.

    python -m benchmarks.sweep_api [--points 50] [--requests 300] [--clients 1]

The API (uvicorn, in this process, a temporary SQLite store) holds a sweep of N points, each a
succeeded job with a report.json as the worker writes it (the latency section included). The
client asks for the sweep as the sweep page does (every 2 s per open page; here back to back)
and times each answer: p50, p99 and max in ms, the first request (report cache cold) apart,
and the CPU time per request (server and client together: on a loaded machine the wall times
grow with the load, this does not).
Progress on stderr; one JSON object on the last stdout line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from spartan_service.jobs.artifacts import ArtifactStore
from spartan_service.jobs.settings import Settings
from spartan_service.jobs.store import JobStore
from spartan_service.service.main import create_app

log = logging.getLogger("benchmarks.sweep_api")
TARGET_P99_MS = 100.0


def report(i: int, n: int) -> dict[str, Any]:
    """A report in the worker's shape, with its layer rows (a 3-layer MLP), so that reading it
    costs what a real one does."""
    budget = (i + 1) / n
    return {
        "job_id": f"job{i}", "accuracy": {"dense": 0.975, "sparse": 0.9 + 0.07 * budget,
                                          "final": 0.9 + 0.07 * budget},
        "latency": {"unit": "ms", "device": "cpu", "batch_size": 64, "dense_measured": 0.9,
                    "sparse_measured": 0.2 + 0.6 * budget, "predicted": 0.25 + 0.55 * budget,
                    "promised": None, "kept": None},
        "sparsity": {"density": budget, "layers": [
            {"name": f"layers.{k}", "kept_fraction": budget, "kept_cost": 100.0 * budget,
             "cost": 100.0} for k in range(3)]},
        "curve": [{"epoch": e, "loss": 1.0 / (e + 1)} for e in range(20)],
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=50)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--clients", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    with tempfile.TemporaryDirectory(prefix="sweep-bench-") as tmp:
        settings = Settings(data_dir=Path(tmp), database_url=None, broker_url=None,
                            api_tokens=None)
        app = create_app(settings)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.02)
        store, artifacts = JobStore(settings.db_url), ArtifactStore(settings.artifacts_dir)
        try:
            with httpx.Client(base_url=url, timeout=30) as client:
                budgets = [round((i + 1) / args.points, 4) for i in range(args.points)]
                sweep = client.post("/v1/sweeps", json={
                    "spec": {"training": {"epochs": 1}}, "budgets": budgets}).json()
                for i, point in enumerate(sweep["points"]):
                    artifacts.write_bytes(point["job_id"], "report.json",
                                          json.dumps(report(i, args.points)).encode())
                    store.claim_job(point["job_id"], "bench", 3)
                    store.finish_job(point["job_id"], "succeeded", worker="bench")
                path = f"/v1/sweeps/{sweep['id']}"

                def timed(_: int) -> float:
                    start = time.perf_counter()
                    response = client.get(path)
                    elapsed = (time.perf_counter() - start) * 1000
                    response.raise_for_status()
                    return elapsed

                first = timed(0)
                body = client.get(path).json()
                assert sum(p["pareto"] for p in body["points"]) == args.points  # all measured
                cpu = time.process_time()
                with ThreadPoolExecutor(args.clients) as pool:
                    times = list(pool.map(timed, range(args.requests)))
                cpu_ms = (time.process_time() - cpu) * 1000 / args.requests
        finally:
            server.should_exit = True
            thread.join(10)
            store.close()
    result = {
        "benchmark": "sweep_api", "points": args.points, "requests": args.requests,
        "clients": args.clients, "first_ms": round(first, 2),
        "p50_ms": round(statistics.median(times), 2), "p99_ms": round(percentile(times, 0.99), 2),
        "max_ms": round(max(times), 2), "target_p99_ms": TARGET_P99_MS,
        # CPU of this process (server and client) per request: what load does not inflate.
        "cpu_ms_per_request": round(cpu_ms, 2),
        "met": percentile(times, 0.99) < TARGET_P99_MS, "load_average": os.getloadavg()[0],
        "bytes": len(json.dumps(body)),
    }
    log.info("p50 %.1f ms, p99 %.1f ms", result["p50_ms"], result["p99_ms"])
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
