"""Structured cost models: the width fitter, the profiler, and the bridge to the Sparsifier."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from spartan import Sparsifier, SparsifierConfig
from spartan_service.costmodels import (
    BilinearCostFitter,
    ProfileError,
    channel_budget_fraction,
    channel_cost_model,
    channel_cost_split,
    channel_costs,
    fit_profile,
    profile_channels,
    validate_cost_model,
    validate_profile,
)
from spartan_service.zoo import build_model


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)


def _grid_xy(noise: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    rows = [[i * o, o, i] for i in (8, 16, 32, 64) for o in (4, 8, 16, 32)]
    x = np.array(rows, dtype=float)
    y = (0.01 + 2e-4 * x[:, 0] + 1e-3 * x[:, 1] + 5e-4 * x[:, 2]) * \
        (1 + rng.normal(0, noise, len(x)))
    return x, y


def test_fitter_recovers_the_coefficients() -> None:
    x, y = _grid_xy()
    f = BilinearCostFitter().fit(x, y)
    assert f.intercept_ == pytest.approx(0.01, abs=1e-6)
    np.testing.assert_allclose(f.coef_, [2e-4, 1e-3, 5e-4], rtol=1e-4)
    x, y = _grid_xy(noise=0.02)
    y[3] *= 12  # a preempted sample
    f = BilinearCostFitter().fit(x, y)
    assert f.coef_[0] == pytest.approx(2e-4, rel=0.1)
    assert not f.inlier_mask_[3]
    assert (f.coef_ >= 0).all()


def test_fitter_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="shape"):
        BilinearCostFitter().fit(np.ones((4, 2)), np.ones(4))
    with pytest.raises(ValueError, match="finite"):
        BilinearCostFitter().fit(np.full((4, 3), np.nan), np.ones(4))
    with pytest.raises(ValueError, match="not fitted"):
        BilinearCostFitter().predict(np.ones((2, 3)))


class CnnBn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.head(x.mean((2, 3)))


@pytest.fixture(scope="module")
def cnn_profile() -> tuple[nn.Module, torch.Tensor, dict[str, Any]]:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model, x = CnnBn(), torch.randn(4, 3, 8, 8)
    return model, x, profile_channels(model, x, quick=True, repeats=2, warmup=0,
                                      progress=False)


def test_profile_times_each_layer_at_kept_widths(cnn_profile: Any) -> None:
    _, _, prof = cnn_profile
    assert prof["structure"] == "channels"
    names = [lay["name"] for lay in prof["layers"]]
    assert names == ["conv1", "conv2", "head"]
    conv2 = prof["layers"][1]
    shapes = {(s["kept_in"], s["kept_out"]) for s in conv2["samples"]}
    assert (16, 32) in shapes and (4, 8) in shapes and len(shapes) == 9  # both sides shrink
    assert {s["kept_in"] for s in prof["layers"][0]["samples"]} == {3}  # the input stays
    assert {s["kept_out"] for s in prof["layers"][2]["samples"]} == {4}  # so does the output
    assert all(s["nnz_blocks"] == s["kept_in"] * s["kept_out"] for s in conv2["samples"])
    assert len(prof["calibration"]) == 3
    validate_profile(prof)  # still a valid (weights-format) profile


def test_fit_gives_width_coefficients_and_a_whole_model_check(cnn_profile: Any) -> None:
    _, _, prof = cnn_profile
    cm = fit_profile(prof)
    validate_cost_model(cm)
    assert cm["structure"] == "channels"
    for lay in cm["layers"].values():
        assert lay["structure"] == "channels"
        assert min(lay["slope"], lay["slope_out"], lay["slope_in"]) >= 0
        assert np.isfinite(lay["mape"]) and np.isfinite(lay["r2"])
    assert 0 <= cm["calibration"]["whole_model_mape"]
    assert len(cm["calibration"]["points"]) == 3


def test_bridge_to_the_sparsifier(cnn_profile: Any) -> None:
    model, x, prof = cnn_profile
    cm = fit_profile(prof)
    costs = channel_costs(cm, model, x)
    assert set(costs) == {"conv1", "conv2", "head"}
    fixed, variable = channel_cost_split(cm, model, x)
    assert fixed >= 0 and variable > 0
    # Halfway between the fixed part and dense: valid whatever the timings came out as.
    budget = (fixed + 0.5 * variable) / (fixed + variable)
    frac = channel_budget_fraction(cm, model, x, budget)
    assert frac == pytest.approx(0.5)
    with pytest.raises(ValueError, match="not above the fixed cost"):
        channel_budget_fraction(cm, model, x, fixed * 0.5, unit="ms")
    s = Sparsifier(model, SparsifierConfig(structure="channels", budget=0.5, min_keep=0.0), 2,
                   costs=costs, example_inputs=x)
    s.step()
    s.step()
    assert s.report().kept_cost <= 0.5 * s.report().cost * (1 + 1e-9)


def test_bridge_refusals(cnn_profile: Any) -> None:
    model, x, prof = cnn_profile
    cm = fit_profile(prof)
    lacking = {**cm, "layers": {k: v for k, v in cm["layers"].items() if k != "conv2"}}
    with pytest.raises(ValueError, match="no cost for prunable layer.*conv2"):
        channel_costs(lacking, model, x)
    other = {**cm, "layers": {**cm["layers"], "conv2": {**cm["layers"]["conv2"],
                                                        "shape": [64, 16, 3, 3]}}}
    with pytest.raises(ValueError, match="fitted for shape"):
        channel_costs(other, model, x)
    weights = {**cm, "layers": {k: {kk: vv for kk, vv in v.items() if kk != "structure"}
                                for k, v in cm["layers"].items()}}
    with pytest.raises(ValueError, match="fitted for weight sparsity"):
        channel_costs(weights, model, x)
    with pytest.raises(ProfileError, match="slope_out"):
        validate_cost_model({**cm, "layers": {"conv1": {**cm["layers"]["conv1"],
                                                        "slope_out": -1.0}}})


def test_builtin_params_model_is_the_default_cost() -> None:
    model = build_model("mlp", {"hidden": [16, 8]}, (6,), 3)
    x = torch.randn(2, 6)
    cm = channel_cost_model(model, x, "params")
    assert cm["unit"] == "params" and set(cm["layers"]) == {"layers.0", "layers.1", "head"}
    fixed, variable = channel_cost_split(cm, model, x)
    assert fixed == 0
    assert variable == sum(p.numel() for p in model.parameters())  # every weight and bias
    flops = channel_cost_model(model, x, "flops")
    assert flops["layers"]["layers.0"]["slope"] == 2.0


def test_conv1d_profile_and_alongside_timing() -> None:
    """A Conv1d model profiles at kept widths; callables passed alongside are timed in the
    whole models' round robin and reported in order."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 8, 3, padding=1), nn.BatchNorm1d(8), nn.ReLU(),
                          nn.Conv1d(8, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool1d(1),
                          nn.Flatten(), nn.Linear(6, 3))
    x = torch.randn(4, 2, 12)
    prof = profile_channels(model, x, quick=True, repeats=2, warmup=0, progress=False,
                            alongside=[lambda: model(x), lambda: None])
    first = prof["layers"][0]
    assert first["name"] == "0" and first["kind"] == "conv"
    assert {s["kept_out"] for s in first["samples"]} == {2, 4, 8}
    assert [row["latency"] > 0 for row in prof["alongside"]] == [True, True]
    cm = fit_profile(prof)
    assert set(cm["layers"]) == {lay["name"] for lay in prof["layers"]}


def test_grouped_query_attention_profiles_whole_groups() -> None:
    from tests.spartan.channel_models import TinyDecoder

    torch.manual_seed(0)
    model, x = TinyDecoder(dim=32, heads=8, kv_heads=4), torch.randn(4, 5, 6)
    prof = profile_channels(model, x, quick=True, repeats=2, warmup=0, progress=False)
    (attn,) = [lay for lay in prof["layers"] if lay["kind"] == "attention"]
    # 2 q heads per k / v head, head_dim 4: kept q widths are multiples of 8
    assert {s["kept_out"] for s in attn["samples"]} == {8, 16, 32}
    assert "attn" in fit_profile(prof)["layers"]
    # each width is timed in the GQA layout: k / v keep half the q heads
    from spartan.channels import trace_channels
    from spartan_service.costmodels.structured import _module_at

    lay = trace_channels(model, x).layers["attn"]
    timed = _module_at(lay, 32, 16, x)
    assert (timed.q_proj.out_features, timed.k_proj.out_features) == (16, 8)


def test_whole_models_timed_apart_from_the_layers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The dense and calibration models (and `alongside`) are timed in a round robin of their
    own, as the worker times a shrunk model against the finalized one: between the layers'
    callables the same models ran 15-25% slower, and the calibration put that on every
    layer (shrunk models then ran faster than promised)."""
    import spartan_service.costmodels.structured as structured

    calls: list[int] = []
    original = structured.time_quietest

    def spy(fns: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(len(fns))
        return original(fns, *args, **kwargs)

    monkeypatch.setattr(structured, "time_quietest", spy)
    model = build_model("mlp", {"hidden": [16, 8]}, (6,), 3)
    extra = lambda: None  # noqa: E731
    prof = profile_channels(model, torch.randn(4, 6), quick=True, repeats=2, warmup=0,
                            progress=False, alongside=[extra])
    samples = sum(len(lay["samples"]) for lay in prof["layers"])
    assert calls == [samples, 1 + len(prof["calibration"]) + 1]  # layers, then whole models
    assert prof["whole_model_timing"] == "apart"
    assert prof["dense_model_latency"] > 0 and prof["alongside"][0]["latency"] > 0
    assert validate_profile(prof).model_extra["whole_model_timing"] == "apart"
    old = {k: v for k, v in prof.items() if k != "whole_model_timing"}  # older profiles
    assert fit_profile(old)["structure"] == "channels"
