"""Starting a worker: `run_worker(...)` (what `spartan worker` and `spartan serve` call) and
`python -m worker`.

The worker uses Celery's prefork pool with one fresh child process per job: a job that crashes
or is killed (out of memory) takes only its child down, the main process keeps consuming and
reaping, and memory goes back to the system after every job. Children die with the main
process (Linux PR_SET_PDEATHSIG), so killing a worker stops its jobs as a crash would, and the
reaper of another worker resumes them.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import sys

from jobs.queue import QUEUES
from jobs.settings import Settings, get_settings

log = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1


def cuda_available() -> bool:
    # NVML-based check: does not initialise CUDA, so forked children can still use it.
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    import torch

    return bool(torch.cuda.is_available())


def default_queues() -> list[str]:
    return ["gpu", "cpu"] if cuda_available() else ["cpu"]


def torch_threads(settings: Settings, concurrency: int) -> int:
    """settings.worker_threads, or the cores but one (left to the API) split across children."""
    if settings.worker_threads:
        return settings.worker_threads
    return max(1, ((os.cpu_count() or 1) - 1) // max(concurrency, 1))


def limit_threads(settings: Settings, concurrency: int) -> None:
    import torch

    n = torch_threads(settings, concurrency)
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or parallel work already ran in this process
        pass
    log.info("torch uses %d threads in process %d", n, os.getpid())


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        log.debug("prctl not available; children may outlive their worker")


def preload() -> None:
    """Import in the main process what every job needs, so that each job's fresh child
    (forked from it) starts in milliseconds instead of seconds."""
    import sklearn.datasets  # noqa: F401  (digits)
    import torch._dynamo  # noqa: F401  (imported by torch.optim on first use)

    import spartan  # noqa: F401
    import worker.runner  # noqa: F401


def run_worker(queues: list[str] | None, concurrency: int, hostname: str | None = None) -> None:
    """Start a Celery worker consuming `queues` (default: gpu and cpu with CUDA, else cpu) with
    `concurrency` job processes. Blocks until the worker shuts down."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    queues = list(queues) if queues else default_queues()
    unknown = sorted(set(queues) - set(QUEUES))
    if unknown:
        raise ValueError(f"unknown queues {', '.join(unknown)}; valid: {', '.join(QUEUES)}")
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    from jobs.store import JobStore

    JobStore(settings.db_url).close()  # create or migrate the schema once, before any child
    os.environ["SPARTAN_WORKER_CONCURRENCY"] = str(concurrency)
    preload()
    from worker.tasks import app

    app.conf.worker_max_tasks_per_child = 1
    argv = ["worker", f"--queues={','.join(queues)}", f"--concurrency={concurrency}",
            "--pool=prefork", "--loglevel=INFO", "--without-gossip", "--without-mingle",
            "--without-heartbeat"]
    if hostname:
        argv.append(f"--hostname={hostname}")
    log.info("worker on queues %s, %d job process(es)", ",".join(queues), concurrency)
    app.worker_main(argv)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m worker", description=run_worker.__doc__)
    parser.add_argument("--queues", "-Q", default=None,
                        help="comma-separated queues (cpu, gpu); default: gpu,cpu with CUDA")
    parser.add_argument("--concurrency", "-c", type=int, default=1,
                        help="jobs run at once (default 1)")
    parser.add_argument("--hostname", "-n", default=None, help="worker name (celery -n)")
    args = parser.parse_args(argv)
    queues = [q.strip() for q in args.queues.split(",") if q.strip()] if args.queues else None
    try:
        run_worker(queues, args.concurrency, args.hostname)
    except ValueError as exc:
        parser.error(str(exc))
