"""The one latency timer: candidates timed round-robin, median and spread per candidate.

Every repeat times each candidate once, in a fresh random order, so drift and bursts from
other processes on a shared machine hit all candidates alike instead of a contiguous run of
them; each candidate's latency is the median over repeats, its spread the interquartile range.
The profiler, the kernel choice of `to_sparse`, the worker's speedup report and the benchmarks
all measure with it.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch


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
    and loop overhead stay negligible for microsecond layers). `warmup` rounds are discarded.
    min_time=0: one call per repeat and no calibration calls (for slow callables)."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    sync = _sync(torch.device(device))
    numbers = [1] * len(fns)
    for i, fn in enumerate(fns if min_time > 0 else ()):
        fn()  # lazy init, allocator warm-up, then calibration
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        numbers[i] = max(1, math.ceil(min_time / max(time.perf_counter() - t0, 1e-7)))
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




def median_ms(fn: Callable[[], Any], device: torch.device | str = "cpu", repeats: int = 7,
              warmup: int = 1, min_time: float = 2e-4) -> float:
    """Median wall time of one fn() call in ms (time_round_robin of one callable)."""
    return time_round_robin([fn], repeats, warmup, device, min_time)[0][0]
