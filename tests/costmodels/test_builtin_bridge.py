"""Built-in cost models, per-block costs for the Sparsifier, and budgets it meets."""

from __future__ import annotations

import copy
import subprocess
import sys
from typing import Any

import pytest
import torch
from torch import nn

from spartan_service.costmodels import validate_cost_model
from spartan_service.costmodels.bridge import block_costs, budget_fraction, cost_split, predict_cost
from spartan_service.costmodels.builtin import flops_cost_model, params_cost_model


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))


class _SelfAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=False)[0]


def _latency_model() -> dict[str, Any]:
    return {"unit": "ms", "device": "test", "overhead": 0.01, "layers": {
        "0": {"intercept": 0.02, "slope": 1e-4, "block": [1, 1], "shape": [32, 16]},
        "2.weight": {"intercept": 0.01, "slope": 2e-4, "block": [1, 1], "shape": [8, 32]}}}


def test_params_cost_model() -> None:
    cm = params_cost_model(_mlp(), block=(4, 4))
    validate_cost_model(cm)
    assert cm["unit"] == "params"
    assert {k: v["slope"] for k, v in cm["layers"].items()} == {"0": 16.0, "2": 16.0}
    assert all(v["intercept"] == 0 for v in cm["layers"].values())


def test_flops_cost_model_counts_output_positions() -> None:
    cnn = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * 5 * 5, 6))
    cm = flops_cost_model(cnn, torch.randn(2, 3, 10, 10))
    validate_cost_model(cm)
    # conv: 2 FLOPs per weight per output position (5 x 5); linear on vectors: 1 position.
    assert cm["layers"]["0"]["slope"] == 2 * 9 * 25
    assert cm["layers"]["3"]["slope"] == 2
    seq = flops_cost_model(_SelfAttention(), torch.randn(3, 5, 8))
    assert seq["layers"]["attn.in_proj_weight"]["slope"] == 2 * 5
    assert seq["layers"]["attn.out_proj"]["slope"] == 2 * 5


def test_block_costs_shapes_and_rescaling() -> None:
    model = _mlp()
    costs = block_costs(_latency_model(), model, block=(4, 4))
    assert {k: tuple(v.shape) for k, v in costs.items()} == {"0.weight": (8, 4),
                                                             "2.weight": (2, 8)}
    assert torch.allclose(costs["0.weight"], torch.full((8, 4), 16 * 1e-4))
    # 3 does not divide 32 or 16: 1x1 blocks, as the Sparsifier falls back.
    assert tuple(block_costs(_latency_model(), model, (3, 3))["0.weight"].shape) == (32, 16)


def test_zero_slope_gets_a_tiny_positive_cost() -> None:
    cm = _latency_model()
    cm["layers"]["0"]["slope"] = 0.0
    costs = block_costs(cm, _mlp())
    assert 0 < float(costs["0.weight"].max()) < 1e-9


def test_missing_layer_and_wrong_shape_named() -> None:
    cm = _latency_model()
    del cm["layers"]["2.weight"]
    with pytest.raises(ValueError, match="no cost for maskable layer.*2.weight"):
        block_costs(cm, _mlp())
    cm = _latency_model()
    cm["layers"]["0"]["shape"] = [32, 17]
    with pytest.raises(ValueError, match="'0' was fitted for shape"):
        block_costs(cm, _mlp())


def test_budget_fraction_counts_fixed_parts() -> None:
    model, cm = _mlp(), _latency_model()
    fixed, variable = cost_split(cm, model)
    assert fixed == pytest.approx(0.01 + 0.02 + 0.01)
    assert variable == pytest.approx(512 * 1e-4 + 256 * 2e-4)
    dense = fixed + variable
    assert budget_fraction(cm, model, budget=1.0) == pytest.approx(1.0)
    assert budget_fraction(cm, model, budget=0.5) == pytest.approx((0.5 * dense - fixed)
                                                                   / variable)
    assert budget_fraction(cm, model, budget=fixed + 0.25 * variable, unit="ms") == \
        pytest.approx(0.25)
    assert budget_fraction(cm, model, budget=(fixed + 0.25 * variable) * 1e3, unit="us") == \
        pytest.approx(0.25)
    # Layer 2 outside prefixes: left dense, its full cost is fixed.
    fixed2, variable2 = cost_split(cm, model, prefixes=["0"])
    assert fixed2 == pytest.approx(fixed + 256 * 2e-4)
    assert variable2 == pytest.approx(512 * 1e-4)


@pytest.mark.parametrize(("budget", "unit", "match"), [
    (0.03, "ms", "fixed cost"),
    (10.0, "ms", "above the dense"),
    (0.0, "fraction", r"\(0, 1\]"),
    (1.0, "flops", "unknown budget unit"),
])
def test_budget_fraction_refusals(budget: float, unit: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        budget_fraction(_latency_model(), _mlp(), budget=budget, unit=unit)


def test_latency_budget_in_a_params_model_refused() -> None:
    with pytest.raises(ValueError, match="latency cost model"):
        budget_fraction(params_cost_model(_mlp()), _mlp(), budget=1.0, unit="ms")


def test_unknown_cost_model_layer_refused() -> None:
    cm = _latency_model()
    cm["layers"]["fc9"] = {"intercept": 0.0, "slope": 1.0}
    with pytest.raises(ValueError, match="'fc9' is not a weight"):
        budget_fraction(cm, _mlp(), budget=0.5)


@pytest.mark.parametrize("block", [(1, 1), (4, 4)])
def test_sparsifier_meets_a_latency_budget(block: tuple[int, int]) -> None:
    spartan = pytest.importorskip("spartan", reason="spartan not importable")
    if not hasattr(spartan, "Sparsifier"):
        pytest.skip("spartan.Sparsifier does not exist yet")
    torch.manual_seed(0)
    model, cm = _mlp(), _latency_model()
    fixed, variable = cost_split(cm, model, block)
    target_ms = fixed + 0.3 * variable
    frac = budget_fraction(cm, model, block, target_ms, unit="ms")
    steps = 12
    sp = spartan.Sparsifier(model, spartan.SparsifierConfig(budget=frac, block=block),
                            total_steps=steps, costs=block_costs(cm, model, block))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(steps):
        loss = model(torch.randn(8, 16)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sp.step()
    attached = predict_cost(cm, model)  # reads the masked weights through the Sparsifier
    sp.finalize()
    predicted = predict_cost(cm, model)
    assert attached == pytest.approx(predicted)
    assert predicted <= target_ms * (1 + 1e-4)
    assert predicted > fixed + 0.2 * variable  # spent most of it, not just pruned everything
    dense = copy.deepcopy(_mlp())
    assert predict_cost(cm, dense) == pytest.approx(fixed + variable)


def test_package_imports_without_torch() -> None:
    code = ("import sys, spartan_service.costmodels, spartan_service.costmodels.fit, "
            "spartan_service.costmodels.schema, spartan_service.costmodels.io; "
            "assert 'torch' not in sys.modules, 'torch loaded'")
    subprocess.run([sys.executable, "-c", code], check=True)
