"""costmodels.deployment: a cost model's error on deployed models, and the refit from them."""

from __future__ import annotations

from typing import Any

import pytest

from spartan_service.costmodels.deployment import ERROR_THRESHOLD, evaluate, predict_point, refit

MODEL: dict[str, Any] = {"unit": "ms", "device": "cpu", "overhead": 0.1, "layers": {
    "fc1": {"intercept": 0.01, "slope": 1e-4, "block": [1, 1], "shape": [64, 32]},
    "fc2": {"intercept": 0.02, "slope": 2e-4, "block": [1, 1], "shape": [10, 64]}}}


def point(measured: float, fc1: float | None, fc2: float | None,
          kernel: str = "csr") -> dict[str, Any]:
    return {"job_id": "j", "batch": 64, "measured": measured,
            "layers": [{"name": "fc1", "nnz_blocks": 1000, "measured": fc1, "kernel": kernel},
                       {"name": "fc2", "nnz_blocks": 300, "measured": fc2, "kernel": kernel}]}


def test_prediction_and_error() -> None:
    total, per_layer = predict_point(MODEL, point(1.0, None, None)["layers"])
    assert per_layer == pytest.approx({"fc1": 0.11, "fc2": 0.08})
    assert total == pytest.approx(0.29)
    good = evaluate(MODEL, [point(0.3, 0.11, 0.08)])
    assert good["points"] == 1 and good["mape"] == pytest.approx(0.01 / 0.3)
    assert not good["needs_refit"] and "message" not in good
    bad = evaluate(MODEL, [point(0.6, 0.2, 0.2)])
    assert bad["mape"] > ERROR_THRESHOLD and bad["needs_refit"] and "refit" in bad["message"]
    other = {"job_id": "x", "batch": 1, "measured": 1.0, "layers": [{"name": "conv",
                                                                      "nnz_blocks": 1}]}
    assert evaluate(MODEL, [other])["points"] == 0  # another model's layers: not comparable


@pytest.mark.parametrize("points", [
    [point(0.6, 0.2, 0.2), point(0.62, 0.21, 0.19)],  # layers leave room for the overhead
    [point(0.2, 0.3, 0.3)],  # layers timed alone add up to more than the whole model
    [point(0.6, 0.2, 0.2, kernel="dense")],  # the export ran them dense
])
def test_refit_lowers_the_error_on_its_points(points: list[dict[str, Any]]) -> None:
    new, profile, summary = refit(MODEL, None, points)
    assert profile is None and summary["points"] == len(points)
    assert summary["mape_after"] < summary["mape_before"]
    assert evaluate(new, points)["mape"] < 0.05
    assert new["overhead"] >= 0 and all(lay["slope"] >= 0 for lay in new["layers"].values())


def test_refit_needs_points_of_its_layers() -> None:
    with pytest.raises(ValueError, match="no deployment points"):
        refit(MODEL, None, [])


def test_a_layer_run_dense_sets_its_cap_not_its_slope() -> None:
    model = {**MODEL, "layers": {k: {**v, "dense_latency": 0.5} for k, v in
                                 MODEL["layers"].items()}}
    new, _, summary = refit(model, None, [point(0.6, 0.05, 0.3, kernel="dense"),
                                          point(0.6, 0.3, 0.25, kernel="csr")])
    assert summary["dense_caps_measured"] == ["fc1", "fc2"]
    assert new["layers"]["fc1"]["slope"] != 0
