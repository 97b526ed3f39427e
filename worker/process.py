"""What every job process of a worker does first: die with its parent, and size torch's threads.

Its own module so that worker.tasks (whose child-init signal calls it) and worker.main (which
starts the worker) do not import each other.
"""

from __future__ import annotations

import logging
import os
import signal

from spartan_service.jobs.process import parent_death_signal
from spartan_service.jobs.settings import Settings

log = logging.getLogger(__name__)


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
    parent_death_signal(signal.SIGKILL)()
