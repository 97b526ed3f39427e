"""One rank of a multi-process job (what spartan_service.worker.launch starts N of).

Every rank plans the job the same way (reading the job's spec, uploads and cost model from the
store; only reading), joins the process group and trains its shard of each global batch under
DistributedDataParallel. Rank 0 alone writes: it holds the lease (heartbeats, progress,
cancellation), saves checkpoints and publishes the artifacts, and returns the job's outcome to
the launcher. A rank that raises leaves a note saying why (worker.launch reads it); errors of
the process group itself (a peer vanished) are left unnoted, so that the attempt counts as lost
rather than failed.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.distributed as dist

from spartan_service.jobs.artifacts import ArtifactStore
from spartan_service.jobs.settings import Settings
from spartan_service.jobs.spec import JobSpec
from spartan_service.jobs.store import JobStore
from spartan_service.worker.launch import note_outcome
from spartan_service.worker.lease import Lease, StopRequested, describe
from spartan_service.worker.plan import pick_device
from spartan_service.worker.ranks import init_ranks

log = logging.getLogger(__name__)


class QuietLease:
    """The lease of ranks other than 0: they report nothing; rank 0 reports for all."""

    progress: dict[str, Any] | None = None

    def update(self, progress: dict[str, Any], metrics: dict[str, Any] | None = None) -> None:
        pass

    def check(self) -> None:
        pass

    def beat(self, resumed_from_step: int | None = None) -> None:
        pass


def main(job_id: str, settings: Settings, worker: str, run_dir: str, threads: int) -> Any:
    """Entry point of a rank (RANK, WORLD_SIZE and the rendezvous come from the launcher)."""
    from spartan_service.worker.process import die_with_parent
    from spartan_service.worker.runner import attempt

    die_with_parent()  # the launcher's agent gone, so is this rank
    torch.set_num_threads(threads)
    rank = -1
    store = JobStore(settings.db_url, create=False)
    try:
        job = store.get_job(job_id)
        if job is None:
            raise ValueError(f"job {job_id} is gone")
        kind = pick_device(JobSpec.model_validate(job.spec).training.device).type
        # A peer that stops answering ends the attempt after this long (not the default 30 min).
        ranks = init_ranks(kind, timeout_s=max(60.0, 3 * settings.heartbeat_timeout_s))
        rank = ranks.rank
        artifacts = ArtifactStore(settings.artifacts_dir)
        if not ranks.leader:
            attempt(job, artifacts, store, settings, QuietLease(), ranks)  # type: ignore[arg-type]
            return None
        interval = min(settings.progress_interval_s, settings.heartbeat_timeout_s / 4)
        with Lease(store, job_id, worker, interval) as lease:
            done = attempt(job, artifacts, store, settings, lease, ranks)
        assert done is not None
        return done[0]
    except StopRequested:
        note_outcome(run_dir, rank, stopped=True)
        raise
    except Exception as exc:
        if not peer_lost(exc):  # a peer that died makes this rank's collective fail: lost
            log.exception("job %s: rank %d failed", job_id, rank)
            note_outcome(run_dir, rank, error=describe(exc))
        raise
    finally:
        store.close()
        if dist.is_initialized():
            dist.destroy_process_group()


_TRANSPORT = ("gloo", "nccl", "connection reset", "connection closed", "broken pipe")


def peer_lost(exc: BaseException) -> bool:
    """Whether an error says a peer rank went away (gloo raises plain RuntimeErrors)."""
    text = str(exc).lower()
    return isinstance(exc, dist.DistError) or (
        isinstance(exc, RuntimeError) and any(t in text for t in _TRANSPORT))
