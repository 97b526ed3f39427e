"""Smoke test of the quality benchmark's core: one tiny grid and the payoff headline."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from benchmarks.quality import accuracy_grid, table
from benchmarks.quality_latency import headline
from benchmarks.quality_train import Setting, train


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def test_grid_rows_have_the_issue_schema() -> None:
    plan = {"seeds": [0], "sparsities": [0.9], "pairs": [("digits", "mlp")],
            "block_pairs": [("digits", "mlp")], "block_sparsities": [0.9], "epochs": 1}
    rows, dense = accuracy_grid(plan)
    keys = {"method", "sparsity", "accuracy", "accuracy_std", "dataset", "model"}
    assert all(keys <= set(r) for r in rows)
    assert {(r["method"], r["block"]) for r in rows} == {
        ("dense", "1x1"), *((m, b) for m in ("spartan", "dual_averaging", "imp")
                            for b in ("1x1", "4x4"))}
    assert all(0 <= r["accuracy"] <= 100 and r["accuracy_std"] == 0 for r in rows)
    sparse = [r for r in rows if r["method"] != "dense"]
    assert all(abs(r["density"] - 0.1) < 0.01 for r in sparse)
    assert dense["digits/mlp"]["accuracy"] > 50  # one epoch already learns digits
    assert "| digits | mlp | 4x4 | 90% |" in table(rows, dense)


def test_final_model_has_exact_zeros() -> None:
    res = train(Setting("digits", "mlp", "spartan", 0.95, epochs=1))
    weights = [m.weight for m in res.model.modules() if isinstance(m, torch.nn.Linear)]
    kept = sum(int((w != 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert kept == pytest.approx(0.05, abs=0.002)
    assert not torch.nn.utils.parametrize.is_parametrized(res.model.layers[0])


def test_bad_settings_raise() -> None:
    with pytest.raises(ValueError, match="sparsity"):
        train(Setting("digits", "mlp", "spartan", 1.0, epochs=1))
    with pytest.raises(ValueError, match="unknown dataset"):
        train(Setting("nope", "mlp", "dense", epochs=1))
    with pytest.raises(ValueError, match="unknown model"):
        train(Setting("digits", "nope", "dense", epochs=1))


def _point(kind: str, acc: float, ms: float) -> dict[str, float | str]:
    return {"kind": kind, "accuracy": acc, "accuracy_std": 0.0, "measured_latency_ms": ms,
            "density": 0.1, "uniform_density": 0.1}


def test_headline_matches_accuracy_and_interpolates_latency() -> None:
    points = [_point("latency_aware", 80.0, 1.0), _point("latency_aware", 85.0, 2.0),
              _point("latency_aware", 88.0, 3.0), _point("param_budget", 79.0, 1.5),
              _point("param_budget", 84.6, 2.5), _point("param_budget", 87.0, 3.5)]
    h = headline(points)
    assert h["latency_aware"]["accuracy"] == 85.0
    # the fastest parameter-budget point within 0.5 point of 85 or better
    assert h["param_budget"]["measured_latency_ms"] == 2.5
    assert h["param_budget"]["within_tolerance"]
    assert h["latency_ratio_equal_accuracy"] == pytest.approx(1.25)
    assert h["equal_latency"]["param_budget_accuracy_interpolated"] == pytest.approx(81.8)


def test_fashion_interval_and_one_run() -> None:
    from benchmarks.quality_fashion import interval
    from tests.workloads import need_fashion_mnist

    ci = interval([80.0, 82.0, 84.0])
    assert ci["mean"] == 82.0 and ci["ci95"] == pytest.approx(4.303 * 2 / 3 ** 0.5, rel=1e-3)
    assert interval([70.0])["ci95"] is None
    need_fashion_mnist()
    res = train(Setting("fashion-quick", "lenet300", "spartan", 0.9, epochs=1))
    assert res.accuracy > 50 and res.density == pytest.approx(0.1, abs=0.01)


def test_fashion_verdicts_need_the_intervals_apart() -> None:
    from benchmarks.quality_fashion import verdicts

    def row(method: str, mean: float, ci: float) -> dict[str, Any]:
        return {"model": "m", "method": method, "sparsity": 0.95,
                "accuracy": {"mean": mean, "ci95": ci}}

    apart = verdicts([row("spartan", 85.0, 0.5), row("dual_averaging", 83.0, 0.5),
                      row("imp", 82.0, 1.0)])
    assert apart == [{"model": "m", "sparsity": 0.95, "ahead": True, "outside_interval": True}]
    overlap = verdicts([row("spartan", 85.0, 1.5), row("dual_averaging", 83.0, 1.0),
                        row("imp", 82.0, 1.0)])
    assert overlap[0]["ahead"] and not overlap[0]["outside_interval"]


def test_fashion_tuning_split_never_reads_the_test_set() -> None:
    from benchmarks.quality_train import TUNE_HOLDOUT, dataset
    from tests.workloads import need_fashion_mnist

    need_fashion_mnist()
    tune = dataset("fashion-tune:3000")
    assert len(tune.y_train) == 3000 and len(tune.y_val) == TUNE_HOLDOUT
    full = dataset("fashion:3000")
    assert len(full.y_train) == 3000 and len(full.y_val) == 10000
    # The tuning validation images are the last training images, not the test images.
    assert not torch.equal(tune.x_val[:5], full.x_val[:5])
    assert torch.equal(tune.y_train, full.y_train)
