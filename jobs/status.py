"""The one vocabulary of job states, used by the store, the API's schemas and the client."""

from __future__ import annotations

from enum import Enum


class JobStatus(str, Enum):
    """queued -> running -> succeeded | failed | cancelled (running -> queued when requeued)."""

    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    def __str__(self) -> str:  # "queued", not "JobStatus.queued", in messages
        return self.value

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)
