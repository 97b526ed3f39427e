"""Small measuring helpers shared by the benchmarks: median wall time and peak extra memory."""

from __future__ import annotations

import ctypes
import ctypes.util
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _sync(device: str | None) -> None:
    if device is not None and device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def median_time(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1,
                device: str | None = None) -> float:
    """Median wall time of fn() in seconds over `repeats` runs after `warmup` runs
    (CUDA work is synchronised when device names a CUDA device)."""
    from spartan.timing import time_round_robin

    return time_round_robin([fn], repeats, warmup, device or "cpu", min_time=0)[0][0] / 1e3


def _rss_high_water_kib() -> int | None:
    try:
        match = re.search(r"VmHWM:\s+(\d+)", _STATUS.read_text())
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _reset_high_water() -> bool:
    try:
        _CLEAR_REFS.write_text("5")  # Linux: reset VmHWM to the current RSS
    except OSError:
        return False
    return True


def _libc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def _release_free_heap() -> None:
    """Hand freed heap pages back to the OS, so reusing them shows up in the resident set."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def track_large_allocations(threshold: int = 64 * 1024) -> bool:
    """Make glibc serve every allocation of `threshold` bytes or more by a fresh mapping that is
    returned on free, so the resident set follows live CPU tensors and `peak_memory` sees
    buffers that would otherwise be recycled inside the heap. Slows allocation down: call it
    after the timings. False where glibc's mallopt is not available."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, threshold)) and bool(
        libc.mallopt(m_trim_threshold, threshold))


def peak_memory(fn: Callable[[], Any], device: str | None = None) -> int | None:
    """Peak memory, in bytes, that fn() adds above what was in use when it started (its result
    included while it is alive). CUDA: the caching allocator's peak; CPU: the process's resident
    set high-water mark (Linux only; None where it cannot be read; see
    `track_large_allocations` for buffers that the heap recycles)."""
    if device is not None and device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
        in_use = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        result = fn()
        torch.cuda.synchronize()
        del result
        return int(torch.cuda.max_memory_allocated() - in_use)
    _release_free_heap()
    if not _reset_high_water():
        return None
    base = _rss_high_water_kib()
    result = fn()
    peak = _rss_high_water_kib()
    del result
    if base is None or peak is None:
        return None
    return (peak - base) * 1024
