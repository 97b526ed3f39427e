"""Sweeps without the API: expanding a sweep into job specs, the frontier, the overall state,
and the figures read from reports."""

from __future__ import annotations

import random
from typing import Any

import pytest

from spartan_service.jobs.results import summarize
from spartan_service.jobs.sweeps import (
    PointError,
    SweepCreate,
    dense_reference,
    expand,
    pareto,
    sweep_status,
)

BASE: dict[str, Any] = {"model": {"arch": "mlp"}, "data": {"dataset": "digits"},
                        "training": {"epochs": 1}}


def brute_force(points: list[tuple[float | None, float | None]]) -> list[bool]:
    out = []
    for a, lat in points:
        if a is None or lat is None:
            out.append(False)
            continue
        out.append(not any(b is not None and m is not None and b >= a and m <= lat
                           and (b > a or m < lat) for b, m in points))
    return out


def test_pareto_on_known_points() -> None:
    # (accuracy, latency ms): the frontier is the fastest at each accuracy level.
    points: list[tuple[float | None, float | None]] = [
        (0.90, 1.0),   # fastest: on
        (0.85, 1.5),   # slower and worse than the first: off
        (0.95, 2.0),   # more accurate for more time: on
        (0.95, 2.5),   # as accurate, slower: off
        (0.97, 4.0),   # on
        (0.96, 4.0),   # same latency, less accurate: off
        (None, 0.5),   # not measured: never on
        (0.99, None),  # not measured: never on
        (0.97, 4.0),   # a duplicate of a frontier point: on too
    ]
    assert pareto(points) == [True, False, True, False, True, False, False, False, True]


def test_pareto_matches_brute_force_on_random_points() -> None:
    rng = random.Random(0)
    for _ in range(200):
        points: list[tuple[float | None, float | None]] = [
            (rng.choice([0.5, 0.6, 0.7, 0.8, None]), rng.choice([1.0, 2.0, 3.0, None]))
            for _ in range(rng.randint(0, 12))]
        assert pareto(points) == brute_force(points), points


def test_expand_budgets_methods_and_one_dense_point() -> None:
    sweep = SweepCreate.model_validate({"spec": BASE, "budgets": [0.1, 0.3],
                                        "methods": ["spartan", "imp", "dense"]})
    points = expand(sweep)
    assert [(p.method, p.budget) for p in points] == [
        ("spartan", 0.1), ("spartan", 0.3), ("imp", 0.1), ("imp", 0.3), ("dense", None)]
    assert [p.spec.sparsity.budget for p in points[:4]] == [0.1, 0.3, 0.1, 0.3]
    assert points[2].spec.sparsity.method == "imp"
    assert points[0].spec.model.arch == "mlp" and points[0].spec.training.epochs == 1


def test_expand_names_the_budget_that_makes_an_invalid_spec() -> None:
    sweep = SweepCreate.model_validate({"spec": BASE, "budgets": [0.1, 1.5]})
    with pytest.raises(PointError) as info:
        expand(sweep)
    assert info.value.loc == ["body", "budgets", 1]
    assert "sparsity.budget" in str(info.value)


def test_expand_structures_and_name_an_unknown_one() -> None:
    sweep = SweepCreate.model_validate({"spec": BASE, "budgets": [0.2, 0.5],
                                        "structures": ["weights", "channels"]})
    assert [(p.spec.sparsity.structure, p.budget) for p in expand(sweep)] == [
        ("weights", 0.2), ("weights", 0.5), ("channels", 0.2), ("channels", 0.5)]
    sweep = SweepCreate.model_validate({"spec": BASE, "budgets": [0.1],
                                        "structures": ["weights", "nonsense"]})
    with pytest.raises(PointError) as info:
        expand(sweep)
    assert info.value.loc == ["body", "structures", 1]
    assert "sparsity.structure" in str(info.value)


def test_latency_budgets_replace_budget_ms() -> None:
    spec = {**BASE, "cost_model": {"kind": "fitted", "id": "c" * 32, "budget_ms": 1.0}}
    points = expand(SweepCreate.model_validate({"spec": spec, "budgets": [0.2, 0.4]}))
    assert [p.spec.cost_model.budget_ms for p in points] == [0.2, 0.4]
    assert {p.spec.sparsity.budget for p in points} == {0.1}  # the default, untouched


def test_sweep_status() -> None:
    assert sweep_status(["queued", "queued"], False) == "queued"
    assert sweep_status(["succeeded", "queued"], False) == "running"
    assert sweep_status(["running", "failed"], False) == "running"
    assert sweep_status(["succeeded", "succeeded"], False) == "succeeded"
    assert sweep_status(["succeeded", "failed"], False) == "failed"
    assert sweep_status(["succeeded", "cancelled"], True) == "cancelled"


def test_summarize_reads_the_latency_section_first() -> None:
    report = {"accuracy": {"dense": 0.97, "sparse": 0.95, "final": 0.95},
              "latency": {"unit": "us", "dense_measured": 300.0, "sparse_measured": 120.0,
                          "predicted": 110.0},
              "speedup": {"unit": "ms", "batches": [{"dense_ms": 9, "sparse_ms": 9}]},
              "sparsity": {"density": 0.1}}
    assert summarize(report) == {
        "accuracy": 0.95, "dense_accuracy": 0.97, "measured_latency": pytest.approx(0.12),
        "dense_latency": pytest.approx(0.3), "predicted_latency": pytest.approx(0.11),
        "latency_unit": "ms", "density": 0.1, "metric": "accuracy"}
    perplexity = summarize({"accuracy": {"sparse": 17.5, "dense": 16.0, "metric": "perplexity"}})
    assert (perplexity["accuracy"], perplexity["metric"]) == (17.5, "perplexity")


def test_summarize_falls_back_to_speedup_and_a_latency_cost() -> None:
    report = {"accuracy": {"dense": None, "sparse": None, "final": 0.9},
              "speedup": {"unit": "ms", "batches": [{"batch": 1, "dense_ms": 1, "sparse_ms": 2},
                                                    {"batch": 64, "dense_ms": 4.0,
                                                     "sparse_ms": 3.0}]},
              "cost": {"unit": "ms", "predicted": 2.5}}
    out = summarize(report)
    assert (out["accuracy"], out["measured_latency"], out["dense_latency"]) == (0.9, 3.0, 4.0)
    assert out["predicted_latency"] == 2.5
    # A parameter-count cost is not a latency; odd values are not figures.
    out = summarize({"cost": {"unit": "params", "predicted": 5000}, "accuracy": {"sparse": True},
                     "speedup": {"error": "no kernel"}})
    assert out["predicted_latency"] is None and out["accuracy"] is None
    assert out["measured_latency"] is None


def test_dense_reference_prefers_a_dense_point() -> None:
    points = [{"method": "spartan", "dense_latency": 3.0, "dense_accuracy": 0.97},
              {"method": "spartan", "dense_latency": 5.0, "dense_accuracy": 0.97},
              {"method": "spartan", "dense_latency": 4.0, "dense_accuracy": None}]
    assert dense_reference(points) == {"accuracy": 0.97, "measured_latency": 4.0,
                                       "job_id": None, "source": "the points' reports"}
    dense = {"method": "dense", "accuracy": 0.98, "measured_latency": 4.2, "job_id": "d"}
    assert dense_reference([*points, dense])["job_id"] == "d"  # type: ignore[index]
    assert dense_reference([{"method": "spartan"}]) is None


def test_at_most_max_points() -> None:
    budgets = [round(0.01 * i, 2) for i in range(1, 101)]
    sweep = SweepCreate.model_validate({"spec": BASE, "budgets": budgets,
                                        "methods": ["spartan", "imp", "dual_averaging"]})
    with pytest.raises(PointError, match="at most 200"):
        expand(sweep)
