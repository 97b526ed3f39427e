"""Latency measurement shared by the profiler and the benchmark, and the machine description.

Candidates are timed round-robin (every repeat times each candidate once, in a fresh random
order), so drift and bursts from other processes on a shared machine hit all candidates alike
instead of a contiguous run of them; each candidate's latency is the median over repeats, its
spread the interquartile range.

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
import math
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

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


def _sync(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def time_round_robin(
    fns: Sequence[Callable[[], Any]],
    repeats: int,
    warmup: int,
    device: torch.device | str = "cpu",
    min_time: float = 2e-4,
    seed: int = 0,
) -> list[tuple[float, float]]:
    """(median ms, IQR ms) per callable. A repeat runs a callable `number` times back to back,
    `number` chosen once so that a repeat lasts at least `min_time` seconds (timer resolution
    and loop overhead stay negligible for microsecond layers). `warmup` rounds are discarded."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    sync = _sync(torch.device(device))
    numbers = []
    for fn in fns:  # first call: lazy init, allocator warm-up, then calibration
        fn()
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        numbers.append(max(1, math.ceil(min_time / max(time.perf_counter() - t0, 1e-7))))
    rng = random.Random(seed)
    order = list(range(len(fns)))
    times: list[list[float]] = [[] for _ in fns]
    for r in range(warmup + repeats):
        rng.shuffle(order)
        for i in order:
            fn, number = fns[i], numbers[i]
            sync()
            t0 = time.perf_counter()
            for _ in range(number):
                fn()
            sync()
            if r >= warmup:
                times[i].append((time.perf_counter() - t0) / number * 1e3)
    return [(statistics.median(t), _iqr(t)) for t in times]


def _iqr(values: list[float]) -> float:
    if len(values) < 4:
        return max(values) - min(values)
    q = statistics.quantiles(values, n=4)
    return q[2] - q[0]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device | str = "cpu") -> dict[str, Any]:
    """CPU model, cores, torch threads, torch / CUDA versions and the GPU, for the profile."""
    dev = torch.device(device)
    info: dict[str, Any] = {
        "cpu": _cpu_model(), "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
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
    return f"cpu: {_cpu_model()} ({n} thread{'s' if n != 1 else ''})"
