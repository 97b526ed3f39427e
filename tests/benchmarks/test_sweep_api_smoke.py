"""benchmarks.sweep_api runs end to end on a small sweep and prints its JSON (no timing
asserted: the figures go to docs/benchmarks.md)."""

from __future__ import annotations

import json

import pytest

from benchmarks import sweep_api


def test_sweep_api_benchmark_prints_one_json_object(capsys: pytest.CaptureFixture[str]) -> None:
    assert sweep_api.main(["--points", "4", "--requests", "5", "--clients", "2"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["points"] == 4 and result["requests"] == 5
    assert result["p50_ms"] > 0 and result["p99_ms"] >= result["p50_ms"]
