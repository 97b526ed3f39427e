"""Starting a worker: `run_worker(...)` (what `spartan worker` and `spartan serve` call) and
`python -m spartan_service.worker`.

The worker uses Celery's prefork pool with one fresh child process per job: a job that crashes
or is killed (out of memory) takes only its child down, the main process keeps consuming and
reaping, and memory goes back to the system after every job. Children die with the main
process (Linux PR_SET_PDEATHSIG), so killing a worker stops its jobs as a crash would, and the
reaper of another worker resumes them.

On the embedded filesystem broker Celery runs billiard's threaded pool, whose supervisor
thread looks for exited children every 0.8 s and whose children linger 1 s after saying
goodbye; `JobTaskPool` replaces a finished job's child as soon as it exits (the next job
starts within ~0.2 s instead of up to ~0.9 s) and ends idle children at once on shutdown.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import signal
import sys
from multiprocessing.connection import wait
from typing import Any

from billiard.exceptions import RestartFreqExceeded
from billiard.pool import RUN, Supervisor, stop_if_not_current
from billiard.pool import Pool as BlockingPool
from celery.concurrency import prefork
from celery.concurrency.asynpool import AsynPool

from spartan_service.jobs.queue import QUEUES
from spartan_service.jobs.settings import get_settings

log = logging.getLogger(__name__)


def cuda_available() -> bool:
    # NVML-based check: does not initialise CUDA, so forked children can still use it.
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    import torch

    return bool(torch.cuda.is_available())


def default_queues() -> list[str]:
    return ["gpu", "cpu"] if cuda_available() else ["cpu"]


def preload() -> None:
    """Import in the main process what every job needs, so that each job's fresh child
    (forked from it) starts in milliseconds instead of seconds."""
    import sklearn.datasets  # noqa: F401  (digits)
    import torch._dynamo  # noqa: F401  (imported by torch.optim on first use)

    import spartan  # noqa: F401
    import spartan_service.worker.runner  # noqa: F401


class ReapingSupervisor(Supervisor):
    """billiard's supervisor, waking when a child exits instead of every 0.8 s: with one
    child per job (max_tasks_per_child=1) the next job waits for the replacement child."""

    poll_s = 0.1  # also the longest a shutdown waits for this thread

    def body(self) -> None:
        pool = self.pool
        try:
            while self._state == RUN and pool._state == RUN:
                pool._maintain_pool()  # reap exited children, start their replacements
                sentinels = [p.sentinel for p in list(pool._pool) if p._popen is not None]
                wait(sentinels, timeout=self.poll_s)
        except RestartFreqExceeded:  # as billiard's: children keep dying at start
            pool.close()
            pool.join()
            raise


def note_lost_child(pid: int, exitcode: int | None) -> None:
    """A job process died: when a signal killed it (SIGKILL: the OOM killer, most likely),
    say so in its job's record, which would otherwise only learn that its worker was lost."""
    if exitcode is None or exitcode >= 0:
        return
    try:
        name = signal.Signals(-exitcode).name
    except ValueError:
        name = f"signal {-exitcode}"
    try:
        from spartan_service.jobs.store import JobStore

        store = JobStore(get_settings().db_url, create=False)
        try:
            job_id = store.note_process_killed(pid, name)
        finally:
            store.close()
        log.warning("job process %d killed by %s (job %s)", pid, name, job_id)
    except Exception:
        log.warning("could not record the loss of job process %d", pid, exc_info=True)


class JobProcessPool(BlockingPool):
    Supervisor = ReapingSupervisor

    def on_job_process_lost(self, job: Any, pid: int, exitcode: int) -> None:
        note_lost_child(pid, exitcode)
        super().on_job_process_lost(job, pid, exitcode)

    def join(self) -> None:
        # billiard's join stops its threads, then joins the children. The result thread ends
        # only once no child runs a task any more (every task done, or every child gone), so
        # after it a child still alive is on its way out, and would sleep 1 s waiting to be
        # killed by that very thread: end it instead. A child caught idle by the SIGTERM
        # takes its exit path (and that sleep) once more, hence the SIGKILL after a moment.
        for thread in (self._worker_handler, self._task_handler, self._result_handler):
            stop_if_not_current(thread)
        alive = [p for p in list(self._pool) if p._popen is not None and p.exitcode is None]
        for proc in alive:
            proc.terminate()
        for proc in alive:
            proc.join(timeout=0.05)
            if proc.exitcode is None:
                try:
                    os.kill(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        super().join()


class JobAsynPool(AsynPool):
    """Celery's event-loop pool (Redis), noting lost job processes like JobProcessPool."""

    def on_job_process_lost(self, job: Any, pid: int, exitcode: int) -> None:
        note_lost_child(pid, exitcode)
        super().on_job_process_lost(job, pid, exitcode)


class JobTaskPool(prefork.TaskPool):
    """Celery's prefork pool; on a transport without an event loop (the filesystem broker) it
    runs `JobProcessPool`. With Redis, Celery's event-loop pool is used unchanged (it reaps
    children on their exit already)."""

    BlockingPool = JobProcessPool
    Pool = JobAsynPool


def exit_now(code: int = 0) -> None:
    """Exit without tearing the interpreter down: with torch imported that takes ~1.5 s, and
    the worker has nothing left to release (its children are joined, the store committed)."""
    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


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
    from spartan_service.jobs.store import JobStore

    JobStore(settings.db_url).close()  # create or migrate the schema once, before any child
    os.environ["SPARTAN_WORKER_QUEUES"] = ",".join(queues)
    preload()
    from spartan_service.worker.tasks import app

    # One fresh child per job: its memory (torch's caches) goes back to the system after
    # each job, and a job that crashes its process takes nothing else down.
    app.conf.worker_max_tasks_per_child = 1
    app.conf.worker_concurrency = concurrency  # read by each job process (worker.tasks)
    app.conf.worker_pool = "spartan_service.worker.main:JobTaskPool"
    argv = ["worker", f"--queues={','.join(queues)}", f"--concurrency={concurrency}",
            "--loglevel=INFO", "--without-gossip", "--without-mingle"]
    if not get_settings().celery_events:
        argv.append("--without-heartbeat")  # Flower needs them; the service does not
    if hostname:
        argv.append(f"--hostname={hostname}")
    log.info("worker on queues %s, %d job process(es)", ",".join(queues), concurrency)
    app.worker_main(argv)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m spartan_service.worker",
                                     description=run_worker.__doc__)
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
    exit_now()
