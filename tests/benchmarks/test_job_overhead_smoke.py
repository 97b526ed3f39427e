"""Smoke test of the job overhead benchmark: both parts run end to end at a tiny size and report
what docs/benchmarks.md quotes (ratios with their spread, the memory growth and its target)."""

from __future__ import annotations

import json

import pytest

from benchmarks import job_overhead


@pytest.mark.slow
def test_tiny_run_reports_both_parts(capsys: pytest.CaptureFixture[str]) -> None:
    job_overhead.main(["--steps", "5", "--repeats", "1", "--size-mb", "8"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for method in ("dense", "spartan"):
        step = out["step_time"][method]
        assert step["ratio"] == step["cpu"]["ratio"] > 0
        assert len(step["wall"]["plain_runs_ms"]) == len(step["cpu"]["job_runs_ms"]) == 1
    memory = out["memory"]
    assert memory["steps"] == 2 and memory["dataset_mb"] >= 8
    assert memory["met"] == (memory["growth_mb"] < job_overhead.TARGET_GROWTH_MB)
