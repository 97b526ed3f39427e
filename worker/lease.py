"""A running job's lease: a background thread that heartbeats the job store.

Each beat proves the worker alive (the reaper requeues jobs whose heartbeat goes stale), carries
the latest progress, and learns whether to stop (cancel requested, or the job was given to
another worker). Beating from a thread keeps the heartbeat fresh through long phases that are
not training steps (building data, evaluating, writing checkpoints).
"""

from __future__ import annotations

import logging
import math
import threading
from types import TracebackType
from typing import Any

from pydantic import ValidationError

from spartan_service.jobs.store import JobStore

log = logging.getLogger(__name__)


class StopRequested(Exception):
    """The job must stop: cancelled, or no longer ours."""


class Lease:
    def __init__(self, store: JobStore, job_id: str, worker: str, interval_s: float) -> None:
        self.store, self.job_id, self.worker = store, job_id, worker
        self.interval_s = interval_s
        self.stop = threading.Event()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._progress: dict[str, Any] | None = None  # latest
        self._dirty = False  # progress changed since the last beat
        self._metrics: dict[str, Any] | None = None  # pending
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id[:8]}",
                                        daemon=True)

    def __enter__(self) -> Lease:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._closed.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    @property
    def progress(self) -> dict[str, Any] | None:
        with self._lock:
            return None if self._progress is None else finite(self._progress)

    def update(self, progress: dict[str, Any], metrics: dict[str, Any] | None = None) -> None:
        """Progress (and metrics, when they changed) for the next beat."""
        with self._lock:
            self._progress, self._dirty = progress, True
            if metrics is not None:
                self._metrics = metrics

    def check(self) -> None:
        """Raise StopRequested when a beat learned that the job must stop."""
        if self.stop.is_set():
            raise StopRequested(self.job_id)

    def beat(self, resumed_from_step: int | None = None) -> None:
        with self._lock:
            progress = self._progress if self._dirty else None
            metrics, self._metrics, self._dirty = self._metrics, None, False
        try:
            if self.store.heartbeat(self.job_id, progress=finite(progress),
                                    metrics=finite(metrics),
                                    resumed_from_step=resumed_from_step, worker=self.worker):
                self.stop.set()
        except Exception:  # a database hiccup must not kill training; the next beat retries
            log.warning("heartbeat of job %s failed", self.job_id, exc_info=True)
            with self._lock:
                self._dirty = self._dirty or progress is not None
                self._metrics = self._metrics or metrics

    def _run(self) -> None:
        while not self._closed.wait(self.interval_s):
            self.beat()


def finite(obj: Any) -> Any:
    """The same JSON tree with NaN and infinities as null (strict JSON for every client)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def describe(exc: BaseException) -> str:
    """One readable line for the job record."""
    if isinstance(exc, ValidationError):  # the stored spec no longer validates
        text = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return f"invalid job spec: {text}"[:1000]
    text = " ".join(str(exc).split()) or "no message"
    return f"{type(exc).__name__}: {text}"[:1000]
