"""The machine a measurement was taken on, a steady allocator for timing, and the quietest of
several rounds of the timer (spartan.timing.time_round_robin).

Large tensors freed by one run and allocated by the next would otherwise come from fresh mmap'd
pages on glibc (its mmap threshold and heap trimming), and the page faults, not the kernel,
dominate: a 2 MB conv output measured 0.6 or 1.6 ms depending on allocation history where the
conv takes 0.27 ms. `keep_freed_memory()` makes the process keep and reuse freed memory, the
steady state of a serving process (or of jemalloc / tcmalloc); the profiler and the benchmark
call it before timing.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch

from spartan_service.costmodels.hardware import cpu_model

log = logging.getLogger(__name__)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc malloc.h
_kept = False


def keep_freed_memory() -> bool:
    """glibc only: serve every allocation from the heap and never trim it (mallopt), for the
    rest of the process. Returns whether it is in effect (False on other C libraries)."""
    global _kept
    if _kept or not sys.platform.startswith("linux"):
        return _kept
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    _kept = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, 2**30) == 1
    log.debug("keep freed memory: %s", _kept)
    return _kept


ROUNDS = 3


def time_quietest(fns: Sequence[Callable[[], Any]], repeats: int, warmup: int,
                  device: torch.device | str = "cpu", min_time: float = 2e-4,
                  rounds: int = ROUNDS) -> list[tuple[float, float]]:
    """(median ms, IQR ms) per callable from the round in which its median was lowest, of
    `rounds` round-robin timings run back to back (warm-up in the first only).

    Why: on a shared machine, another process's burst can cover a whole round of a
    millisecond model (15 repeats last tens of ms) and move its median by 1.5-3x; the median
    of each round discards preemptions within it, the lowest round the bursts that outlast
    it. The profiler, the export's speedup timing and the deployment measurement all use it,
    so a cost model and the models it is checked against are measured alike."""
    from spartan.timing import time_round_robin

    if rounds < 1:
        raise ValueError(f"need rounds >= 1, got {rounds}")
    best: list[tuple[float, float]] = []
    for r in range(rounds):
        results = time_round_robin(fns, repeats, warmup if r == 0 else 0, device, min_time,
                                   seed=r)
        best = results if not best else [min(b, n) for b, n in zip(best, results, strict=True)]
    return best


def machine_info(device: torch.device | str = "cpu") -> dict[str, Any]:
    """CPU model, cores, torch threads, torch / CUDA versions and the GPU, for the profile."""
    dev = torch.device(device)
    info: dict[str, Any] = {
        "cpu": cpu_model(), "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "gpu": None,
    }
    if dev.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(dev)
        info["cuda"] = torch.version.cuda
        info["capability"] = list(torch.cuda.get_device_capability(dev))
    return info


def device_label(device: torch.device | str = "cpu") -> str:
    """Short device description, e.g. 'cpu: AMD EPYC 7B13 (1 thread)' or 'cuda: NVIDIA H100'."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(dev)}"
    n = torch.get_num_threads()
    return f"cpu: {cpu_model()} ({n} thread{'s' if n != 1 else ''})"
