"""Launching a job's ranks: torch.distributed's elastic launcher (torchrun's API) on this machine.

The worker process that claimed a job with `resources.processes` N > 1 starts an agent process
(`python -m worker.launch`: a job process of the worker pool is daemonic and may not start
children of its own) and waits for it. The agent runs `elastic_launch` with a c10d rendezvous on
a free loopback port and no restarts (a rank that dies ends the attempt), which starts N ranks
(worker.rank_job). Rank 0 runs the job as a single process would (lease, checkpoints,
artifacts) with the others as data-parallel peers. How the attempt ended comes back in a small
JSON file the agent writes in the run's scratch directory:

- the job's outcome (metrics and progress from rank 0), recorded by the caller;
- a rank raised an exception: RankFailed with its message (the job fails, as in one process);
- rank 0 was told to stop (cancel, or the job was given to another worker): StopRequested;
- a rank died (killed, out of memory), or the agent did: RanksLost. The caller puts the job
  back in its queue, and the next attempt resumes from the last checkpoint on as many ranks.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from spartan_service.jobs.settings import Settings
from spartan_service.worker.lease import StopRequested

log = logging.getLogger(__name__)
RESULT, SETTINGS = "result.json", "settings.json"


class RankFailed(Exception):
    """A rank raised: the job fails with its message."""


class RanksLost(Exception):
    """A rank died without reporting why: the attempt is lost, like a crashed worker."""


def launch(job_id: str, processes: int, settings: Settings, worker: str, threads: int
           ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the job's ranks to the end: (metrics, progress) of the job, or one of the
    exceptions above."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"spartan-{job_id[:8]}-"))
    try:
        (run_dir / SETTINGS).write_text(settings.model_dump_json())
        cmd = [sys.executable, "-m", "spartan_service.worker.launch", str(run_dir), job_id, worker,
               str(processes), str(threads)]
        done = subprocess.run(cmd, check=False)
        path = run_dir / RESULT
        result: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {
            "kind": "lost", "message": f"the launcher exited with {done.returncode}"}
        kind, message = result["kind"], result.get("message", "")
        if kind == "succeeded":
            return result["metrics"], result["progress"]
        if kind == "failed":
            raise RankFailed(message)
        if kind == "stopped":
            raise StopRequested(job_id)
        raise RanksLost(message)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def agent(run_dir: Path, job_id: str, worker: str, processes: int, threads: int) -> int:
    """The agent process: elastic_launch the ranks, write how it went to RESULT."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from spartan_service.worker import rank_job
    from spartan_service.worker.lease import finite

    settings = Settings.model_validate_json((run_dir / SETTINGS).read_text())
    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=processes,
        run_id=f"{job_id}-{uuid.uuid4().hex[:6]}",
        # Port 0: the agent's rendezvous store binds a free port itself (as torchrun's
        # --standalone does), instead of one reserved here and taken later by another.
        rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0",
        max_restarts=0, monitor_interval=0.2, start_method="spawn")
    try:
        outcome = elastic_launch(config, rank_job.main)(
            job_id, settings, worker, str(run_dir), threads)[0]
        result = {"kind": "succeeded", "metrics": finite(outcome.metrics),
                  "progress": finite(outcome.progress)}
    except ChildFailedError as exc:
        result = why(run_dir, exc)
    tmp = run_dir / f"{RESULT}.tmp"
    tmp.write_text(json.dumps(result))
    tmp.replace(run_dir / RESULT)
    return 0 if result["kind"] == "succeeded" else 1


def why(run_dir: Path, exc: Any) -> dict[str, str]:
    """How the ranks failed, from the launcher's failures and the notes the ranks left."""
    killed = [f"rank {rank} ({f.signal_name()})" for rank, f in exc.failures.items()
              if f.exitcode < 0 and f.exitcode != -signal.SIGTERM]  # SIGTERM: the agent's own
    if killed:  # whatever the others then raised followed from it
        return {"kind": "lost", "message": f"{', '.join(killed)} killed"}
    notes = [json.loads(p.read_text()) for p in sorted(run_dir.glob("outcome-*.json"))]
    for note in notes:
        if note.get("error"):
            return {"kind": "failed", "message": note["error"]}
    if any(note.get("stopped") for note in notes):
        return {"kind": "stopped"}
    return {"kind": "lost", "message": " ".join(str(exc).split())[-300:]}


def note_outcome(run_dir: str, rank: int, **fields: Any) -> None:
    """What a rank leaves behind when it exits with an error (read by `why`)."""
    path = Path(run_dir, f"outcome-{rank}.json")
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(fields))
    tmp.replace(path)


if __name__ == "__main__":
    from spartan_service.worker.process import die_with_parent

    die_with_parent()  # the worker's job process gone: so are the agent and its ranks
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")
    run, job, name, n, t = sys.argv[1:6]
    sys.exit(agent(Path(run), job, name, int(n), int(t)))
