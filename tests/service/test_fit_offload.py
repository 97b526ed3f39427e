"""Cost-model fitting leaves the API process: while a large profile is fitted, the fitting CPU
is spent by a pool process, not the API's, and /healthz answers before the fit ends."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.service.factories import profile
from tests.service.served import children, cpu_seconds, served

LAYERS = 150


def pool_cpu(pid: int) -> float:
    return sum(cpu_seconds(child) for child in children(pid))


@pytest.mark.slow
def test_large_fit_runs_in_the_pool_while_healthz_answers(tmp_path: Path) -> None:
    with served(tmp_path, SPARTAN_MAX_BODY_BYTES=str(8 << 20)) as (url, proc):
        small = httpx.post(f"{url}/v1/cost-models", json={"profile": profile(2)}, timeout=120)
        assert small.status_code == 201, small.text  # the pool is started and warm
        api_before, pool_before = cpu_seconds(proc.pid), pool_cpu(proc.pid)

        events: list[str] = []
        result: list[httpx.Response] = []

        def fit() -> None:
            result.append(httpx.post(f"{url}/v1/cost-models", timeout=600,
                                     json={"name": "big", "profile": profile(LAYERS)}))
            events.append("fit answered")

        thread = threading.Thread(target=fit)
        thread.start()
        while pool_cpu(proc.pid) < pool_before + 0.5 and thread.is_alive():
            time.sleep(0.05)  # until the pool has clearly started on the big profile
        for _ in range(5):
            assert httpx.get(f"{url}/healthz", timeout=60).status_code == 200
            events.append("healthz")
        thread.join()

        assert result[0].status_code == 201, result[0].text
        assert len(result[0].json()["data"]["layers"]) == LAYERS
        assert events == ["healthz"] * 5 + ["fit answered"]
        api_cpu = cpu_seconds(proc.pid) - api_before
        fit_cpu = pool_cpu(proc.pid) - pool_before
        assert fit_cpu > 3 * api_cpu, (fit_cpu, api_cpu)
