"""Robust linear fits: known coefficients recovered through noise and 5-20x spikes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.base import clone

from spartan_service.costmodels import (
    LinearCostFitter,
    fit_profile,
    plot_fit,
    predict_latency,
    validate_cost_model,
)

from .conftest import synthetic_profile


def _slope(profile: dict[str, Any], robust: bool = True) -> float:
    return float(fit_profile(profile, robust=robust)["layers"]["fc1"]["slope"])


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize(("n", "spikes"), [(12, 1), (12, 2), (20, 3)])
def test_spikes_move_the_slope_a_few_percent(seed: int, n: int, spikes: int) -> None:
    clean = synthetic_profile(n=n, seed=seed)
    spiky = synthetic_profile(n=n, seed=seed, spikes=spikes)
    assert _slope(spiky) == pytest.approx(_slope(clean), rel=0.03)
    assert _slope(spiky) == pytest.approx(2e-5, rel=0.05)


def test_least_squares_is_moved_by_spikes() -> None:
    """The comparison the robust fit is judged against (and proof the data has spikes)."""
    spiky = synthetic_profile(n=12, spikes=2, seed=3)
    assert abs(_slope(spiky, robust=False) / 2e-5 - 1) > 0.3


def test_recovers_intercept_and_quality() -> None:
    cm = fit_profile(synthetic_profile(intercept=0.05, slope=2e-5, n=16, noise=0.01))
    layer = cm["layers"]["fc1"]
    assert layer["intercept"] == pytest.approx(0.05, rel=0.1)
    assert layer["slope"] == pytest.approx(2e-5, rel=0.03)
    assert layer["r2"] > 0.99 and 0 <= layer["mape"] < 0.03
    assert layer["block"] == [1, 1] and cm["unit"] == "ms" and cm["device"] == "test"
    validate_cost_model(cm)


def test_slope_never_negative() -> None:
    x = np.arange(1, 11, dtype=float)
    fitter = LinearCostFitter().fit(x, 5.0 - 0.1 * x)
    assert fitter.slope_ == 0.0 and fitter.coef_.tolist() == [0.0]


def test_estimator_conventions() -> None:
    fitter = LinearCostFitter(robust=False, residual_threshold=0.3)
    assert fitter.get_params()["residual_threshold"] == 0.3
    assert not hasattr(fitter, "slope_")
    x, y = np.array([[1.0], [2.0], [4.0]]), np.array([1.0, 2.0, 4.0])
    assert fitter.fit(x, y) is fitter
    np.testing.assert_allclose(fitter.predict([8.0]), [8.0], rtol=1e-9)
    assert fitter.score(x, y) == pytest.approx(1.0)
    assert not hasattr(clone(fitter), "slope_")


@pytest.mark.parametrize(("x", "y"), [
    (np.ones((3, 2)), np.ones(3)),  # two features
    (np.ones(3), np.ones(4)),  # lengths differ
    (np.ones(1), np.ones(1)),  # one sample
    (np.array([1.0, np.nan, 3.0]), np.ones(3)),
])
def test_bad_shapes_raise(x: np.ndarray, y: np.ndarray) -> None:
    with pytest.raises(ValueError):
        LinearCostFitter().fit(x, y)


def test_predict_before_fit_raises() -> None:
    with pytest.raises(ValueError, match="not fitted"):
        LinearCostFitter().predict([1.0])


def test_machine_and_overhead_carried(profile: dict[str, Any]) -> None:
    profile["machine"] = {"cpu": "test cpu", "threads": 1}
    profile["overhead"] = 0.5
    cm = fit_profile(profile)
    assert cm["machine"] == {"cpu": "test cpu", "threads": 1} and cm["overhead"] == 0.5
    nnz = {"fc1": 1000, "fc2": 100}
    want = 0.5 + sum(cm["layers"][k]["intercept"] + cm["layers"][k]["slope"] * v
                     for k, v in nnz.items())
    assert predict_latency(cm, nnz) == pytest.approx(want)
    with pytest.raises(ValueError, match="missing \\['fc2'\\]"):
        predict_latency(cm, {"fc1": 3})


def test_plot_fit_writes_png(profile: dict[str, Any], tmp_path: Path) -> None:
    out = plot_fit(profile, fit_profile(profile), tmp_path / "fit.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_prediction_is_flat_above_the_crossover() -> None:
    """Above the density where the sparse kernel stops beating dense, the export runs dense:
    the prediction is the dense latency there, the sparse line below it."""
    prof = synthetic_profile(intercept=0.01, slope=1e-5, noise=0.0, shape=(256, 64))
    prof["layers"][0]["dense_latency"] = 0.09  # the line reaches it at 8000 of 16384 blocks
    cm = fit_profile(prof)
    lay = cm["layers"]["fc1"]
    assert lay["crossover_nnz"] == pytest.approx(8000, rel=1e-3)
    assert predict_latency(cm, {"fc1": 4000}, include_overhead=False) == pytest.approx(0.05)
    assert predict_latency(cm, {"fc1": 16384}, include_overhead=False) == pytest.approx(0.09)
