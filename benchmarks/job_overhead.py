"""What the service itself costs a training job: its step against a plain PyTorch loop, and
the worker's memory while it streams a dataset larger than it may hold.

    python -m benchmarks.job_overhead [--size-mb 400] [--steps 80] [--threads 1] [--skip ...]

1. Step time, dense and sparse (spartan, budget 0.1): the same MLP (784-512-256-10), data (an
   .npy pair under a data root, standardised per feature, of at least 16384 examples and enough
   that one epoch holds every step) and batch (256),
   trained for --steps steps (a) by a real job, run_job in this process on a SQLite store, its
   step time taken from the report (`training.seconds / training.steps`: the job's own clock,
   which covers its loop, progress, metrics records and checkpoints but not its set-up), and
   (b) by a plain loop: batches of sorted random indices read from np.load(mmap_mode="r"),
   standardised, forward, cross-entropy, backward, SGD, Sparsifier.step(). After one warm-up
   run of each, --repeats pairs run back to back (which goes first alternates). Each run is
   timed twice: wall clock (the job's own `training.seconds`), and CPU time of the process over
   the loop (the job's loop, lease thread included; the plain loop's), which does not count
   the time other processes hold the cores: on a shared machine wall-clock pairs swing by
   +-40% while CPU pairs agree within a few percent. The figure (`ratio`) is the median of the
   pairs' CPU ratios job / plain, with quartiles and range beside the wall-clock ones;
   `decisive` says whether every pair fell on the same side of the target. Target:
   job / plain <= 1.05, dense and sparse.
2. Memory: a .npy pair of --size-mb MB (float32 rows of 1024 features; the issue's figure is
   2048 MB, four times the 500 MB allowed; the quick default, 400 MB, is 0.8x that) streamed
   for one epoch (batch 1024, dense MLP 1024-256-10, loader_workers 0) by run_job in a child
   process, after a small warm-up job in the same process (a worker's first job imports
   scikit-learn, the export and the cost models once). The parent samples the child's VmRSS
   (and RssAnon, RssFile) every 50 ms; growth is the peak minus the child's RSS just before the
   job started. Target: < 500 MB.

Progress on stderr; one JSON object on the last stdout line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("benchmarks.job_overhead")
REPO = Path(__file__).resolve().parents[1]
FEATURES, CLASSES, EXAMPLES, BATCH, HIDDEN = 784, 10, 16384, 256, [512, 256]
MEM_FEATURES, MEM_BATCH = 1024, 1024
TARGET_RATIO, TARGET_GROWTH_MB = 1.05, 500.0


def write_pair(folder: Path, rows: int, features: int, seed: int = 0) -> tuple[Path, Path]:
    """x (rows, features) float32 and y int64 labels of a fixed linear teacher, written in
    chunks (the benchmark never holds the whole array)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    teacher = rng.standard_normal((features, CLASSES)).astype(np.float32)
    x = np.lib.format.open_memmap(folder / "x.npy", "w+", np.float32, (rows, features))
    y = np.lib.format.open_memmap(folder / "y.npy", "w+", np.int64, (rows,))
    for i in range(0, rows, 8192):
        chunk = rng.standard_normal((min(8192, rows - i), features)).astype(np.float32)
        x[i:i + len(chunk)] = chunk * 2 + 1
        y[i:i + len(chunk)] = (chunk @ teacher).argmax(1)
    x.flush()
    y.flush()
    del x, y
    return folder / "x.npy", folder / "y.npy"


def job_spec(x: Path, y: Path, method: str, steps: int, hidden: list[int], batch: int,
             epochs: int = 1) -> dict[str, Any]:
    return {"model": {"arch": "mlp", "kwargs": {"hidden": hidden}},
            "data": {"dataset": "npy", "kwargs": {"x": str(x), "y": str(y)},
                     "val_fraction": 0.02},
            "sparsity": {"method": method, "budget": 0.1},
            "training": {"epochs": epochs, "batch_size": batch, "optimizer": "sgd",
                         "lr": 0.05, "max_steps": steps, "checkpoint_every": 10**9,
                         "device": "cpu"}}


@contextmanager
def loop_cpu_seconds() -> Iterator[list[float]]:
    """CPU seconds of each job training loop (worker.training.Loop.run) run inside the block:
    this process's CPU time over the loop, its lease thread included (what the service costs),
    the time other processes hold the cores excluded."""
    from spartan_service.worker import training

    original = training.Loop.run
    spent: list[float] = []

    def timed(self: Any, state: Any) -> Any:
        start = time.process_time()
        try:
            return original(self, state)
        finally:
            spent.append(time.process_time() - start)

    training.Loop.run = timed  # type: ignore[method-assign]
    try:
        yield spent
    finally:
        training.Loop.run = original  # type: ignore[method-assign]


def run_job_here(root: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """One job through the worker's own code, in this process; its report."""
    from spartan_service.jobs.artifacts import ArtifactStore
    from spartan_service.jobs.settings import Settings
    from spartan_service.jobs.spec import JobSpec
    from spartan_service.jobs.store import JobStore
    from spartan_service.worker.runner import run_job

    data_dir = Path(tempfile.mkdtemp(prefix="job-", dir=root))
    settings = Settings(data_dir=data_dir, database_url=None, broker_url=None, api_tokens=None,
                        data_roots=str(root), progress_interval_s=1.0)
    store = JobStore(settings.db_url)
    try:
        body = JobSpec.model_validate(spec).model_dump(mode="json")
        job_id = store.create_job("bench", body, "cpu", "overhead").id
        run_job(job_id, store, ArtifactStore(settings.artifacts_dir), settings)
        job = store.get_job(job_id)
        assert job is not None
        if job.status != "succeeded":
            raise RuntimeError(f"the job {job.status}: {job.error}")
        path = settings.artifacts_dir / job_id / "report.json"
        report: dict[str, Any] = json.loads(path.read_text())
        return report
    finally:
        store.close()


def plain_loop(x_path: Path, y_path: Path, method: str, steps: int, seed: int = 0
               ) -> tuple[float, float]:
    """(wall, CPU) seconds per step of the plain loop (after its set-up)."""
    import torch
    from torch.nn import functional as F

    from spartan import Sparsifier, SparsifierConfig
    from spartan_service.zoo import build_model

    x = np.load(x_path, mmap_mode="r")
    y = np.load(y_path, mmap_mode="r")
    mean = x[:4096].mean(0)
    std = x[:4096].std(0) + 1e-8
    torch.manual_seed(seed)
    model = build_model("mlp", {"hidden": HIDDEN}, (FEATURES,), CLASSES)
    sparsifier = None
    if method != "dense":
        config = SparsifierConfig(method=method, budget=0.1)  # type: ignore[arg-type]
        sparsifier = Sparsifier(model, config, steps)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    rng = np.random.default_rng(seed)
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        idx = np.sort(rng.choice(len(y), BATCH, replace=False))
        xb = torch.from_numpy((x[idx] - mean) / std)
        yb = torch.from_numpy(y[idx])
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sparsifier is not None:
            sparsifier.step()
    return (time.perf_counter() - start) / steps, (time.process_time() - cpu) / steps


def _median(values: list[float]) -> float:
    return float(np.median(values))


def _summary(plain: list[float], jobs: list[float]) -> dict[str, Any]:
    """Medians (ms per step) and the per-pair ratios job / plain: median, quartiles, range,
    and whether every pair fell on the same side of the target."""
    ratios = sorted(j / p for p, j in zip(plain, jobs, strict=True))
    q1, q3 = (float(v) for v in np.percentile(ratios, [25, 75]))
    return {"plain_ms": float(np.median(plain)) * 1e3, "job_ms": float(np.median(jobs)) * 1e3,
            "ratio": float(np.median(ratios)), "ratio_quartiles": [q1, q3],
            "ratio_range": [ratios[0], ratios[-1]],
            "decisive": ratios[-1] <= TARGET_RATIO or ratios[0] > TARGET_RATIO,
            "plain_runs_ms": [v * 1e3 for v in plain], "job_runs_ms": [v * 1e3 for v in jobs]}


def step_overhead(root: Path, steps: int, repeats: int) -> dict[str, Any]:
    # One epoch holds every step (2% held out): the job's steps are the plain loop's, with one
    # validation pass and one checkpoint at the end, as a long job has per epoch.
    examples = max(EXAMPLES, int((steps + 1) * BATCH / 0.98) + 1)
    x, y = write_pair(root / "steps", examples, FEATURES)
    out: dict[str, Any] = {"steps": steps, "batch": BATCH, "model": f"mlp {HIDDEN}",
                           "examples": examples, "repeats": repeats,
                           "statistic": "median of the per-pair ratios job / plain (each pair "
                                        "run back to back, which goes first alternating)"}
    for method in ("dense", "spartan"):
        spec = job_spec(x, y, method, steps, HIDDEN, BATCH)

        def job() -> tuple[float, float]:
            with loop_cpu_seconds() as cpu:
                report = run_job_here(root, spec)  # noqa: B023 (called in this iteration)
            assert report["training"]["steps"] == steps, report["training"]
            return report["training"]["seconds"] / steps, cpu[0] / steps

        plain_loop(x, y, method, steps)  # warm-up of both, not counted
        job()
        runs: dict[str, list[tuple[float, float]]] = {"plain": [], "job": []}
        for i in range(repeats):
            if i % 2:  # neither always runs second (caches, the machine's drift)
                j, p = job(), plain_loop(x, y, method, steps)
            else:
                p, j = plain_loop(x, y, method, steps), job()
            log.info("%s pair %d: wall plain %.2f job %.2f ms/step (%.3f); CPU plain %.2f job "
                     "%.2f ms/step (%.3f)", method, i, p[0] * 1e3, j[0] * 1e3, j[0] / p[0],
                     p[1] * 1e3, j[1] * 1e3, j[1] / p[1])
            runs["plain"].append(p)
            runs["job"].append(j)
        out[method] = {clock: _summary([r[k] for r in runs["plain"]],
                                       [r[k] for r in runs["job"]])
                       for k, clock in enumerate(("wall", "cpu"))}
        out[method]["ratio"] = out[method]["cpu"]["ratio"]
    out["met"] = all(out[m]["ratio"] <= TARGET_RATIO for m in ("dense", "spartan"))
    return out


def status_mb(pid: int) -> dict[str, float]:
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                fields[key] = int(rest.split()[0]) / 1024
    return fields


CHILD = """
import json, os, sys, time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
import torch
torch.set_num_threads({threads})
from benchmarks.job_overhead import run_job_here
# A small job first: what the first job of a worker imports (scikit-learn, the sparse export,
# the cost models) is loaded before the baseline, as in a warm worker.
run_job_here(Path({root!r}), json.loads({warm!r}))
sys.stdout.write("ready\\n"); sys.stdout.flush()
sys.stdin.readline()
report = run_job_here(Path({root!r}), json.loads({spec!r}))
sys.stdout.write(json.dumps(report["training"]) + "\\n"); sys.stdout.flush()
"""


def memory_growth(root: Path, size_mb: int, threads: int) -> dict[str, Any]:
    rows = size_mb * (1 << 20) // (MEM_FEATURES * 4)
    x, y = write_pair(root / "memory", rows, MEM_FEATURES, seed=1)
    spec = job_spec(x, y, "dense", 10**9, [256], MEM_BATCH)
    wx, wy = write_pair(root / "warm-up", 4 * MEM_BATCH, MEM_FEATURES, seed=2)
    warm = job_spec(wx, wy, "dense", 10**9, [256], MEM_BATCH)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    code = CHILD.format(threads=threads, root=str(root), spec=json.dumps(spec),
                        warm=json.dumps(warm))
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
    assert proc.stdin is not None and proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError("the child did not start")
    baseline = status_mb(proc.pid)
    proc.stdin.write("go\n")
    proc.stdin.flush()
    peak: dict[str, float] = dict(baseline)
    start = time.perf_counter()
    while proc.poll() is None:
        try:
            now = status_mb(proc.pid)
        except OSError:
            break
        for key, value in now.items():  # a finished child (a zombie) reports nothing
            peak[key] = max(peak.get(key, 0.0), value)
        time.sleep(0.05)
    training = json.loads(proc.stdout.read().strip().splitlines()[-1])
    if proc.wait() != 0:
        raise RuntimeError("the memory job failed")
    growth = peak["VmRSS"] - baseline["VmRSS"]
    return {"dataset_mb": round((x.stat().st_size + y.stat().st_size) / 2**20, 1),
            "rows": rows, "features": MEM_FEATURES, "batch": MEM_BATCH,
            "steps": training["steps"], "seconds": round(time.perf_counter() - start, 1),
            "baseline_rss_mb": baseline["VmRSS"], "baseline_anon_mb": baseline.get("RssAnon"),
            "baseline_file_mb": baseline.get("RssFile"), "peak_rss_mb": peak["VmRSS"],
            "peak_anon_mb": peak.get("RssAnon"), "peak_file_mb": peak.get("RssFile"),
            "growth_mb": growth, "met": growth < TARGET_GROWTH_MB}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=400, help="memory part's dataset size")
    ap.add_argument("--steps", type=int, default=80, help="steps per step-time run")
    ap.add_argument("--repeats", type=int, default=7, help="timed pairs, after warm-up")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--skip", nargs="*", default=[], choices=["steps", "memory"])
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    logging.getLogger("worker").setLevel(logging.WARNING)
    import torch

    from spartan_service.costmodels.timing import machine_info

    torch.set_num_threads(args.threads)
    out: dict[str, Any] = {"benchmark": "job_overhead", "threads": args.threads,
                           "machine": machine_info("cpu"), "torch": torch.__version__}
    with tempfile.TemporaryDirectory(prefix="job-overhead-") as tmp:
        root = Path(tmp).resolve()
        if "steps" not in args.skip:
            out["step_time"] = step_overhead(root, args.steps, args.repeats)
            log.info("step time (CPU): %s", {m: round(out["step_time"][m]["ratio"], 3)
                                       for m in ("dense", "spartan")})
        if "memory" not in args.skip:
            out["memory"] = memory_growth(root, args.size_mb, args.threads)
            log.info("memory: %.0f MB streamed, RSS grew %.0f MB", out["memory"]["dataset_mb"],
                     out["memory"]["growth_mb"])
    print(json.dumps(out))


if __name__ == "__main__":
    main()
