"""Launching a job's ranks: torch.distributed's elastic launcher (torchrun's API) on this machine.

The worker process that claimed a job with `resources.processes` N > 1 starts N ranks with
`elastic_launch` (a c10d rendezvous on a free loopback port, no restarts: a rank that dies ends
the attempt) and waits. Rank 0 runs the job as a single process would (lease, checkpoints,
artifacts) with the others as data-parallel peers; see worker.rank_job. How the attempt ended
comes back as rank 0's return value, or, when it did not return, from a small outcome file each
rank writes before it exits with an error:

- rank 0 returned: the job's outcome (metrics and progress), recorded by the caller;
- a rank raised an exception: RankFailed with its message (the job fails, as it would in one
  process);
- rank 0 was told to stop (cancel, or the job was given to another worker): StopRequested;
- a rank died without a word (killed, out of memory): RanksLost. The caller leaves the job to
  crash recovery: it stops heartbeating, and the reaper requeues the job, which resumes from its
  last checkpoint on the same number of ranks.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import socket
import tempfile
import uuid
from pathlib import Path
from typing import Any

from jobs.settings import Settings
from worker.lease import StopRequested

log = logging.getLogger(__name__)


class RankFailed(Exception):
    """A rank raised: the job fails with its message."""


class RanksLost(Exception):
    """A rank died without reporting why: the attempt is lost, like a crashed worker."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(job_id: str, processes: int, settings: Settings, worker: str, threads: int) -> Any:
    """Run the job's ranks to the end; rank 0's return value, or one of the exceptions above."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from worker import rank_job

    run_dir = Path(tempfile.mkdtemp(prefix=f"spartan-{job_id[:8]}-"))
    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=processes,
        run_id=f"{job_id}-{uuid.uuid4().hex[:6]}",
        rdzv_backend="c10d", rdzv_endpoint=f"127.0.0.1:{free_port()}",
        max_restarts=0, monitor_interval=0.2, start_method="spawn")
    try:
        try:
            results = elastic_launch(config, rank_job.main)(
                job_id, settings, worker, str(run_dir), threads)
        except ChildFailedError as exc:
            raise _why(run_dir, exc) from None
        return results[0]
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def _why(run_dir: Path, exc: Any) -> Exception:
    killed = [f"rank {rank} ({f.signal_name()})" for rank, f in exc.failures.items()
              if f.exitcode < 0 and f.exitcode != -signal.SIGTERM]  # SIGTERM: the agent's own
    if killed:  # whatever the others then raised followed from it
        return RanksLost(f"{', '.join(killed)} killed")
    notes = [json.loads(p.read_text()) for p in sorted(run_dir.glob("outcome-*.json"))]
    for note in notes:
        if note.get("error"):
            return RankFailed(note["error"])
    if any(note.get("stopped") for note in notes):
        return StopRequested("stop requested")
    log.warning("a rank died: %s", " ".join(str(exc).split())[-500:])
    return RanksLost(" ".join(str(exc).split())[-300:])


def note_outcome(run_dir: str, rank: int, **fields: Any) -> None:
    """What a rank leaves behind when it exits with an error (read by `launch`)."""
    path = Path(run_dir, f"outcome-{rank}.json")
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(fields))
    tmp.replace(path)
