"""Crash recovery time on the distributed path, on this machine.

    python -m benchmarks.recovery [--quick] [--heartbeat-timeout S] [--trials N]

Starts a redis-server of its own, a PostgreSQL database (127.0.0.1, created and dropped),
`spartan serve --workers 0` and two `python -m worker` processes (tests/reliability/cluster.py).
Baseline: one job run uninterrupted. Then, per trial, the same job is submitted, its worker is
SIGKILLed mid-job, and the benchmark measures (polling the API every 50 ms):
- recovery_s: from the SIGKILL to the job running again on the other worker (heartbeat
  timeout + a reaper round + claim and resume from the checkpoint); target <= 120 s;
- completion_after_kill_s: from the SIGKILL to the job succeeded;
- killed_vs_baseline: the killed job's submit-to-done time over the uninterrupted job's.
The heartbeat timeout defaults to the service's default (settings.heartbeat_timeout_s, 20 s),
the production figure; --quick uses 4 s and one trial. Progress on stderr; one JSON object on
the last stdout line.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from spartan_service.jobs.settings import Settings
from tests.reliability.cluster import LONG_SPEC, Cluster, Unavailable

log = logging.getLogger("benchmarks.recovery")


def poll(cluster: Cluster, job_id: str, done: Any, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = cluster.client.job(job_id)
        if done(job):
            return job
        if job["status"] in ("failed", "cancelled") or time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id}: {job}\n{cluster.logs()}")
        time.sleep(0.05)


def baseline(cluster: Cluster) -> float:
    start = time.monotonic()
    job_id = cluster.client.submit({**LONG_SPEC, "name": "baseline"})["id"]
    poll(cluster, job_id, lambda j: j["status"] == "succeeded", 600)
    return time.monotonic() - start


def trial(cluster: Cluster, timeout: float) -> dict[str, Any]:
    start = time.monotonic()
    job_id = cluster.client.submit({**LONG_SPEC, "name": "killed"})["id"]
    job = poll(cluster, job_id, lambda j: j["status"] == "running"
               and (j["progress"].get("step") or 0) >= 500, 120)
    victim = cluster.running_on(job)
    cluster.kill_worker(victim)
    killed_at = time.monotonic()
    job = poll(cluster, job_id, lambda j: j["attempts"] == 2 and j["status"] == "running",
               timeout)
    resumed = time.monotonic() - killed_at
    job = poll(cluster, job_id, lambda j: j["status"] == "succeeded", timeout + 600)
    done = time.monotonic() - killed_at
    replacement = cluster.add_worker()  # two workers again for the next trial
    cluster.wait_ready(replacement)
    assert cluster.running_on(job) != victim and job["attempts"] == 2, job
    step = int(job["resumed_from_step"] or 0)
    return {"recovery_s": resumed, "completion_after_kill_s": done,
            "job_s": killed_at - start + done, "resumed_from_step": step}


def run(root: Path, heartbeat: float, trials: int) -> dict[str, Any]:
    cluster = Cluster(root, heartbeat_timeout_s=heartbeat, max_attempts=3)
    try:
        cluster.start()
        cluster.wait_ready(cluster.add_worker(), cluster.add_worker())
        base = baseline(cluster)
        log.info("baseline job (uninterrupted): %.2f s", base)
        results = []
        for i in range(trials):
            results.append(trial(cluster, timeout=heartbeat * 3 + 120))
            log.info("trial %d: %s", i + 1, {k: round(v, 2) for k, v in results[-1].items()})
    finally:
        cluster.stop()
    recovery = [r["recovery_s"] for r in results]
    killed_job = statistics.median(r["job_s"] for r in results)
    return {
        "benchmark": "recovery", "backend": "redis+postgresql", "trials": trials,
        "heartbeat_timeout_s": heartbeat,
        "recovery_s": round(statistics.median(recovery), 2),
        "recovery_max_s": round(max(recovery), 2),
        "completion_after_kill_s": round(statistics.median(
            r["completion_after_kill_s"] for r in results), 2),
        "baseline_job_s": round(base, 2), "killed_job_s": round(killed_job, 2),
        "killed_vs_baseline": round(killed_job / base, 2),
        "resumed_from_step": [r["resumed_from_step"] for r in results],
        "target_recovery_s": 120, "meets_target": max(recovery) <= 120,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.recovery",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 s heartbeat timeout, 1 trial")
    parser.add_argument("--heartbeat-timeout", type=float, default=None,
                        help="seconds without heartbeat before a worker counts as lost "
                             "(default: the service default; 4 with --quick)")
    parser.add_argument("--trials", type=int, default=None, help="default 2 (1 with --quick)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    default_heartbeat = 4.0 if args.quick else Settings.model_fields["heartbeat_timeout_s"].default
    heartbeat = args.heartbeat_timeout or default_heartbeat
    trials = args.trials or (1 if args.quick else 2)
    with tempfile.TemporaryDirectory(prefix="spartan-recovery-") as tmp:
        try:
            result = run(Path(tmp), heartbeat, trials)
        except Unavailable as exc:
            parser.exit(2, f"benchmarks.recovery: {exc}\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
