"""What this worker can run: devices, and the most ranks one job may use per queue.

Advertised in the job store's worker registry (jobs.registry) by the worker's main process, and
checked again before a job is claimed (a job too big for this worker is left to another).
"""

from __future__ import annotations

import os
import platform
from typing import Any

import torch

from spartan_service.jobs.settings import Settings


def devices() -> dict[str, Any]:
    gpus = ([torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            if torch.cuda.is_available() else [])
    return {"host": platform.node(), "cpus": os.cpu_count() or 1, "gpus": gpus}


def capacity(settings: Settings, queues: list[str], found: dict[str, Any] | None = None
             ) -> dict[str, int]:
    """queue -> the most ranks one job may use here: one per GPU on the gpu queue (the CPU
    cores on a machine without GPUs, where gpu-queue jobs with device 'auto' run on CPU), one
    per core on the cpu queue; settings.worker_processes overrides both."""
    found = found if found is not None else devices()
    out = {}
    for queue in queues:
        n = len(found["gpus"]) if queue == "gpu" and found["gpus"] else int(found["cpus"])
        out[queue] = settings.worker_processes or max(1, n)
    return out


def queues_served() -> list[str]:
    """The queues this worker consumes (spartan_service.worker.main sets them for its processes)."""
    raw = os.environ.get("SPARTAN_WORKER_QUEUES", "cpu")
    return [q for q in raw.split(",") if q]
