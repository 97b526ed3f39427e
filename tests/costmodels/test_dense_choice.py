"""Piecewise latency in the allocation: a layer whose dense latency is the better buy is left
dense with all its weights, and the budget still holds under the piecewise prediction."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spartan import Sparsifier, SparsifierConfig
from spartan_service.costmodels.bridge import predict_cost, split_costs
from spartan_service.costmodels.dense_choice import piecewise_split


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))


def _latency_model(dense0: float | None = 0.03) -> dict[str, Any]:
    # layer 0: its line reaches its dense latency at 100 of 512 weights (crossover ~20%)
    first: dict[str, Any] = {"intercept": 0.02, "slope": 1e-4, "block": [1, 1],
                             "shape": [32, 16]}
    if dense0 is not None:
        first["dense_latency"] = dense0
    return {"unit": "ms", "device": "test", "overhead": 0.01, "layers": {
        "0": first,
        "2": {"intercept": 0.01, "slope": 2e-4, "block": [1, 1], "shape": [8, 32],
              "dense_latency": 0.2}}}


def _train(model: nn.Module, config: SparsifierConfig, costs: Any) -> None:
    torch.manual_seed(1)
    x, y = torch.randn(64, 16), torch.randint(0, 8, (64,))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sp = Sparsifier(model, config, 20, costs=costs)
    for _ in range(20):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sp.step()
    sp.finalize()


@pytest.mark.parametrize("allocation", ["global", "uniform"])
def test_a_layer_best_left_dense_keeps_every_weight_within_budget(allocation: str) -> None:
    model, cm = _mlp(), _latency_model()
    split, fraction, target = piecewise_split(split_costs(cm, model), model, 0.7,
                                              allocation=allocation)
    assert split.dense_layers == ("0.weight",)
    assert set(split.costs) == {"2.weight"}
    # dense model: overhead 0.01 + layer 0 capped at 0.03 + layer 2's line 0.01 + 0.0512
    assert target == pytest.approx(0.7 * 0.1012)
    assert split.fixed == pytest.approx(0.01 + 0.03 + 0.01)  # layer 0 costs its dense latency
    assert fraction == pytest.approx((target - split.fixed) / (256 * 2e-4))
    config = SparsifierConfig(budget=fraction, allocation=allocation, prefixes=tuple(split.costs))
    _train(model, config, split.costs)
    w0, w2 = model[0].weight, model[2].weight
    assert bool((w0 != 0).all())  # the dense layer keeps all its weights
    assert 0 < int((w2 != 0).sum()) < w2.numel()
    predicted = predict_cost(cm, model)
    assert predicted <= target * (1 + 1e-4)
    assert predicted >= target - 2e-4  # the budget is spent, less than one weight of layer 2


def test_the_line_is_kept_where_dense_would_overspend() -> None:
    model, cm = _mlp(), _latency_model()
    # 0.0405 ms leaves 0.0005 ms over the fixed cost: layer 0 dense would add 0.01
    split, fraction, target = piecewise_split(split_costs(cm, model), model, 0.0405, unit="ms")
    assert split.dense_layers == ()
    assert set(split.costs) == {"0.weight", "2.weight"}
    assert target == pytest.approx(0.0405)
    assert fraction == pytest.approx(0.0005 / split.variable)


def test_no_dense_latency_no_choice() -> None:
    model, cm = _mlp(), _latency_model(dense0=None)
    base = split_costs(cm, model)
    split, fraction, _ = piecewise_split(base, model, 0.5)
    assert split is base and fraction == pytest.approx(base.fraction(0.5))


def test_budget_at_fixed_cost_is_refused() -> None:
    model = _mlp()
    with pytest.raises(ValueError, match="not above the fixed cost"):
        piecewise_split(split_costs(_latency_model(), model), model, 0.04, unit="ms")
