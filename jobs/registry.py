"""The worker registry: which workers are alive, what queues they serve and how many ranks one
job may use on each (`resources.processes`), for admission at submit.

A worker's main process registers when it is ready and refreshes its row every reaper round
(a few seconds); a row not refreshed within the liveness window is ignored, and removed when
the worker shuts down cleanly. Admission: a job asking for more processes than every live
worker of its queue can give is refused (422); with no live worker of its queue at all it is
accepted and waits, since a worker that can run it may start later.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from spartan_service.jobs.models import WorkerRecord, utcnow

# A worker refreshes its row every reaper round (at most 10 s apart): three missed rounds and
# it no longer counts.
LIVE_WITHIN_S = 30.0


class WorkerRegistry:
    def session(self) -> AbstractContextManager[Session]:
        raise NotImplementedError

    def register_worker(self, name: str, capacity: dict[str, int],
                        devices: dict[str, Any]) -> None:
        """Insert or refresh this worker's row."""
        with self.session() as s:
            row = s.get(WorkerRecord, name)
            if row is None:
                s.add(WorkerRecord(name=name, capacity=capacity, devices=devices,
                                   seen_at=utcnow()))
            else:
                row.capacity, row.devices, row.seen_at = capacity, devices, utcnow()

    def forget_worker(self, name: str) -> None:
        with self.session() as s:
            s.execute(delete(WorkerRecord).where(WorkerRecord.name == name))

    def live_workers(self, within_s: float = LIVE_WITHIN_S) -> list[WorkerRecord]:
        """Workers seen in the last `within_s` seconds."""
        since = utcnow() - timedelta(seconds=within_s)
        with self.session() as s:
            return list(s.scalars(select(WorkerRecord).where(WorkerRecord.seen_at >= since)
                                  .order_by(WorkerRecord.name)))


def admission_error(workers: list[WorkerRecord], queue: str, processes: int) -> str | None:
    """Why no live worker of `queue` could ever run a job of `processes` ranks, or None (it
    can run, or no worker of that queue is alive to say: the job waits for one)."""
    serving = [w for w in workers if queue in w.capacity]
    if processes <= 1 or not serving:
        return None
    most = max(int(w.capacity[queue]) for w in serving)
    if processes <= most:
        return None
    return (f"resources.processes {processes} is more than any live worker of queue "
            f"{queue!r} can run: the most is {most} ({len(serving)} worker(s)); lower it, or "
            "start a worker with more devices")


UNSERVED = "no live worker serves queue"


def unserved_warning(workers: list[WorkerRecord], queue: str) -> str | None:
    """A note for a job of `queue` when workers are alive but none serves that queue (a gpu
    job with only cpu workers, say): it waits until one starts. None when some worker serves
    it, or when no worker at all is alive to tell (starting up, or run elsewhere)."""
    if not workers or any(queue in w.capacity for w in workers):
        return None
    served = sorted({q for w in workers for q in w.capacity})
    return (f"{UNSERVED} {queue!r} (live workers serve: {', '.join(served) or 'nothing'}); "
            f"the job waits until a worker of that queue starts")
