"""benchmarks.closed_loop runs end to end (quick: a small MLP, one seed) for both structures
and prints its JSON (no error bound asserted: the figures go to docs/benchmarks.md)."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import closed_loop


def test_closed_loop_benchmark_prints_one_json_object(capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    threads = torch.get_num_threads()
    try:
        assert closed_loop.main(["--quick"]) == 0
    finally:
        torch.set_num_threads(threads)
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result["structures"]) == {"weights", "channels"}
    for structure, figures in result["structures"].items():
        versions = {r["cost_model_version"] for r in figures["before_refit"]}, \
            {r["cost_model_version"] for r in figures["after_refit"]}
        assert versions == ({1}, {2}), structure  # the jobs after the refit take version 2
        assert len(figures["before_refit"]) == len(closed_loop.FRACTIONS)
        for row in figures["before_refit"] + figures["after_refit"]:
            assert row["measured_ms"] > 0 and row["predicted_ms"] > 0
    assert result["mape_promised_vs_measured"] >= 0 and result["seed_spread"] is None
    assert result["load_average_1min"]["before"] >= 0
    with pytest.raises(SystemExit):
        closed_loop.main(["--structures", "blocks"])
