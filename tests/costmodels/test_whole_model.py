"""Whole-model predictions: layers timed as the deployed model runs them, nothing counted twice."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import spartan_service.costmodels.profiler as profiler
from spartan.kernels import apply_kernels
from spartan_service.costmodels import fit_profile, predict_latency
from spartan_service.costmodels.profiler import profile_model


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _strides_timed(monkeypatch: pytest.MonkeyPatch) -> dict[str, tuple[int, ...]]:
    """Records the strides of the input each layer is profiled on."""
    seen: dict[str, tuple[int, ...]] = {}
    original = profiler._profile_layer

    def spy(pname: str, w: torch.Tensor, module: nn.Module, inp: torch.Tensor,
            *args: Any) -> dict[str, Any]:
        seen[profiler.layer_name(pname)] = tuple(inp.stride())
        return original(pname, w, module, inp, *args)

    monkeypatch.setattr(profiler, "_profile_layer", spy)
    return seen


def test_layers_timed_on_the_deployed_models_activations(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    # A CSR layer hands the next layer a transposed activation; a dense layer on that layout
    # ran 3-5x slower here than on the dense model's contiguous one (the whole-model bias).
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(),
                          nn.Linear(24, 8))
    x = torch.randn(12, 16)
    seen = _strides_timed(monkeypatch)
    prof = profile_model(model, x, kernel="csr", quick=True, progress=False)
    deployed = apply_kernels(model, {lay["name"]: lay["kernel"] for lay in prof["layers"]})
    owners = {name: deployed.get_submodule(name) for name in seen}
    with torch.inference_mode():
        inputs, _ = profiler._capture(deployed, x, owners)
    assert seen == {name: tuple(t.stride()) for name, t in inputs.items()}
    assert seen["2"] != (32, 1)  # i.e. not the dense model's layout


class _Attention(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, 4, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=False)[0]


def test_attention_projections_counted_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # The projections run inside the replayed model (they are not Linear modules it can skip),
    # so their dense time is taken off the overhead once, and the fit predicts them once.
    timed: list[Any] = []
    original = profiler.time_quietest

    def spy(*args: Any, **kwargs: Any) -> Any:
        timed.append(original(*args, **kwargs))
        return timed[-1]

    monkeypatch.setattr(profiler, "time_quietest", spy)
    torch.manual_seed(0)
    prof = profile_model(_Attention(64), torch.randn(8, 4, 64), kernel="dense", quick=True,
                         progress=False)
    (rest, _), (dense, _) = timed[-1]  # the last timing: replayed model, then whole model
    projections = {lay["name"]: lay["dense_latency"] for lay in prof["layers"]}
    assert list(projections) == ["attn.in_proj_weight", "attn.out_proj"]
    assert prof["overhead_excludes"] == list(projections)
    assert prof["overhead"] == max(0.0, rest - sum(projections.values()))
    assert prof["dense_model_latency"] == dense
    cm = fit_profile(prof)
    assert cm["overhead_excludes"] == list(projections)
    full = {lay["name"]: lay["samples"][-1]["nnz_blocks"] for lay in prof["layers"]}
    # the line, but never above the layer's dense latency (spartan_service.costmodels.fit.piecewise)
    each = {k: min(v["intercept"] + v["slope"] * full[k], v.get("dense_latency", float("inf")))
            for k, v in cm["layers"].items()}
    assert predict_latency(cm, full) == pytest.approx(cm["overhead"] + sum(each.values()))
