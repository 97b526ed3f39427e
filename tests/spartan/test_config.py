"""SparsifierConfig validation and the schedules built from it."""

from __future__ import annotations

import math

import pytest

from spartan import SparsifierConfig
from spartan.schedule import Schedule, anneal


def test_defaults_follow_the_contract() -> None:
    c = SparsifierConfig()
    assert (c.method, c.budget, c.block, c.allocation) == ("spartan", 0.1, (1, 1), "global")
    assert (c.beta_init, c.beta_final, c.warmup_frac, c.finetune_frac, c.schedule) == (
        1.0, 20.0, 0.2, 0.2, "linear")
    assert SparsifierConfig.from_dict(c.to_dict()) == c


def test_from_dict_accepts_json_lists() -> None:
    c = SparsifierConfig.from_dict({"block": [4, 4], "prefixes": ["fc1"]})
    assert c.block == (4, 4) and c.prefixes == ("fc1",)
    with pytest.raises(ValueError, match="unknown SparsifierConfig fields"):
        SparsifierConfig.from_dict({"bugdet": 0.1})


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "magnitude"}, "method must be one of"),
    ({"allocation": "layerwise"}, "allocation must be one of"),
    ({"schedule": "step"}, "schedule must be one of"),
    ({"budget": 0.0}, "budget must be in"),
    ({"budget": 1.5}, "budget must be in"),
    ({"budget": math.nan}, "finite number"),
    ({"budget": True}, "finite number"),
    ({"block": (4,)}, "two positive ints"),
    ({"block": (4, 0)}, "two positive ints"),
    ({"beta_init": 0.0}, "beta_init must be > 0"),
    ({"beta_final": -1.0}, "beta_final must be > 0"),
    ({"warmup_frac": -0.1}, "warmup_frac must be in"),
    ({"finetune_frac": 1.1}, "finetune_frac must be in"),
    ({"warmup_frac": 0.7, "finetune_frac": 0.4}, "must be <= 1"),
    ({"prefixes": ()}, "prefixes must be non-empty"),
    ({"beta_scale": "std"}, "beta_scale must be one of"),
])
def test_invalid_fields_raise(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SparsifierConfig(**kwargs)


def test_linear_schedule() -> None:
    s = Schedule(SparsifierConfig(budget=0.1, warmup_frac=0.2, finetune_frac=0.2), 100)
    assert (s.warmup_steps, s.freeze_step) == (20, 80)
    assert s.fraction(0) == 1.0 and s.fraction(20) == pytest.approx(0.1)
    assert s.fraction(10) == pytest.approx(0.55) and s.fraction(90) == pytest.approx(0.1)
    assert s.beta(0) == 1.0 and s.beta(40) == pytest.approx(10.5) and s.beta(95) == 20.0
    assert not s.frozen(79) and s.frozen(80)


def test_cosine_schedule_is_monotone_with_the_same_ends() -> None:
    s = Schedule(SparsifierConfig(budget=0.05, schedule="cosine"), 50)
    fr = [s.fraction(t) for t in range(51)]
    assert fr[0] == 1.0 and fr[s.warmup_steps] == pytest.approx(0.05)
    assert all(a >= b for a, b in zip(fr, fr[1:], strict=False))
    assert anneal(1.0, 0.0, 0.5, "cosine") == pytest.approx(0.5)
    assert anneal(1.0, 0.0, 0.25, "cosine") > anneal(1.0, 0.0, 0.25, "linear")


def test_warmup_never_ends_after_the_freeze() -> None:
    s = Schedule(SparsifierConfig(warmup_frac=0.5, finetune_frac=0.5), 3)
    assert s.warmup_steps <= s.freeze_step
    assert s.fraction(s.freeze_step) == pytest.approx(0.1)


def test_total_steps_must_be_positive() -> None:
    with pytest.raises(ValueError, match="total_steps"):
        Schedule(SparsifierConfig(), 0)
