"""Splitting a budget across layers: uniform and ERK fractions."""

from __future__ import annotations

import pytest

from spartan.allocation import erk_fractions, erk_scores, group_fractions

SHAPES = [(300, 784), (100, 300), (10, 100), (64, 3, 3, 3)]
COSTS = [300 * 784, 100 * 300, 10 * 100, 64 * 27]


def test_erk_meets_the_budget_and_caps_at_one() -> None:
    fr = erk_fractions(0.1, SHAPES, COSTS)
    kept = sum(f * c for f, c in zip(fr, COSTS, strict=True))
    assert kept == pytest.approx(0.1 * sum(COSTS))
    assert all(0 < f <= 1 for f in fr)
    assert fr[2] == 1.0  # the small layer's ERK density would exceed 1: made dense
    # Below the cap, density is proportional to sum(shape) / prod(shape).
    s = erk_scores(SHAPES)
    assert fr[0] / fr[1] == pytest.approx(s[0] / s[1])


def test_erk_is_dense_at_fraction_one() -> None:
    assert erk_fractions(1.0, SHAPES, COSTS) == [1.0] * 4


def test_group_fractions() -> None:
    assert group_fractions("global", 0.3, SHAPES, COSTS) == [0.3]
    assert group_fractions("uniform", 0.3, SHAPES, COSTS) == [0.3] * 4
    assert group_fractions("erk", 0.3, SHAPES, COSTS) == erk_fractions(0.3, SHAPES, COSTS)
    with pytest.raises(ValueError, match="allocation"):
        group_fractions("random", 0.3, SHAPES, COSTS)
    with pytest.raises(ValueError, match="fraction"):
        erk_fractions(0.0, SHAPES, COSTS)
    with pytest.raises(ValueError, match="costs must be > 0"):
        erk_fractions(0.5, SHAPES, [1, 1, 0, 1])
