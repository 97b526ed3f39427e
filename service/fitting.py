"""Cost-model fitting off the API process: a small pool of processes (spawned, so no lock
held by one of the API's threads is copied into them) that validate and fit profiles.

A 5000-layer profile costs tens of seconds of CPU (scikit-learn per layer). In the API's
threadpool it would hold the GIL against the event loop, so /healthz and status polling
would wait; in the pool it only competes for a core, and at most `fit_processes` fits run at
once whatever the number of requests (the others wait their turn in the pool's queue).
"""

from __future__ import annotations

import asyncio
import atexit
import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

Outcome = tuple[dict[str, Any], dict[str, Any]]


class FitRefused(ValueError):
    """The profile cannot be fitted; `layer` and `field` say where (costmodels.ProfileError's
    attributes, carried across the process boundary as plain values)."""

    def __init__(self, message: str, layer: str | None, field: str | None) -> None:
        super().__init__(message)
        self.layer, self.field = layer, field


def fit_checked(profile: dict[str, Any]) -> tuple[str, Any]:
    """Runs in a pool process: ("ok", (validated profile, fitted model)) or ("refused",
    (message, layer, field)); exceptions with extra state do not survive pickling whole."""
    from spartan_service.costmodels.fit import fit_profile
    from spartan_service.costmodels.schema import validate_profile

    try:
        validated = validate_profile(profile).model_dump(mode="json", exclude_none=True)
        return "ok", (validated, fit_profile(validated))
    except ValueError as exc:
        return "refused", (str(exc), getattr(exc, "layer", None), getattr(exc, "field", None))


_pools: dict[int, ProcessPoolExecutor] = {}
_pools_lock = threading.Lock()


def _shared_executor(processes: int) -> ProcessPoolExecutor:
    """One pool per process and size, started at first use (its processes import
    scikit-learn once, not per request) and shut down when the process exits."""
    with _pools_lock:
        if processes not in _pools:
            _pools[processes] = ProcessPoolExecutor(
                max_workers=processes, mp_context=multiprocessing.get_context("spawn"))
        return _pools[processes]


@atexit.register
def _shutdown() -> None:
    with _pools_lock:
        for pool in _pools.values():
            pool.shutdown(wait=False, cancel_futures=True)
        _pools.clear()


class FitPool:
    def __init__(self, processes: int) -> None:
        self.processes = processes

    def _executor(self) -> ProcessPoolExecutor:
        return _shared_executor(self.processes)

    async def fit(self, profile: dict[str, Any]) -> Outcome:
        """(validated profile, fitted model), or FitRefused."""
        loop = asyncio.get_running_loop()
        try:
            kind, value = await loop.run_in_executor(self._executor(), fit_checked, profile)
        except BrokenProcessPool:
            # A fitting process died (killed for memory, say): the next fit gets a new pool.
            with _pools_lock:
                _pools.pop(self.processes, None)
            raise
        if kind == "refused":
            raise FitRefused(*value)
        return value  # type: ignore[no-any-return]

