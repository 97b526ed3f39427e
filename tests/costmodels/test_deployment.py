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


# A structured model: latency = intercept + slope x pairs + slope_out x out + slope_in x in.
CHANNELS: dict[str, Any] = {"unit": "ms", "device": "cpu", "overhead": 0.05, "layers": {
    "fc1": {"intercept": 0.01, "slope": 1e-5, "slope_out": 1e-4, "slope_in": 0.0,
            "structure": "channels", "kind": "linear", "shape": [64, 32], "full": [32, 64]},
    "fc2": {"intercept": 0.02, "slope": 2e-5, "slope_out": 0.0, "slope_in": 1e-4,
            "structure": "channels", "kind": "linear", "shape": [10, 64], "full": [64, 10]}}}


def channel_point(measured: float, fc1: float | None, fc2: float | None,
                  kept: int = 32) -> dict[str, Any]:
    return {"job_id": "j", "batch": 64, "measured": measured, "layers": [
        {"name": "fc1", "nnz_blocks": 32 * kept, "kept_in": 32, "kept_out": kept,
         "measured": fc1, "kernel": "dense"},
        {"name": "fc2", "nnz_blocks": kept * 10, "kept_in": kept, "kept_out": 10,
         "measured": fc2, "kernel": "dense"}]}


def test_structured_points_are_predicted_from_their_widths() -> None:
    total, per_layer = predict_point(CHANNELS, channel_point(1.0, None, None)["layers"])
    assert per_layer["fc1"] == pytest.approx(0.01 + 1e-5 * 32 * 32 + 1e-4 * 32)
    assert per_layer["fc2"] == pytest.approx(0.02 + 2e-5 * 32 * 10 + 1e-4 * 32)
    assert total == pytest.approx(0.05 + sum(per_layer.values()))
    # Without widths a structured layer cannot be predicted: not comparable, not a crash.
    bare = {"job_id": "x", "batch": 64, "measured": 1.0,
            "layers": [{"name": "fc1", "nnz_blocks": 10}, {"name": "fc2", "nnz_blocks": 10}]}
    with pytest.raises(ValueError, match="no kept widths"):
        predict_point(CHANNELS, bare["layers"])
    assert evaluate(CHANNELS, [bare])["points"] == 0


def test_structured_refit_scales_each_layer_and_keeps_its_widths() -> None:
    profile = {"device": "cpu", "unit": "ms", "layers": [
        {"name": n, "shape": lay["shape"], "samples": []} for n, lay in
        CHANNELS["layers"].items()]}
    # Every layer measured 2x its prediction, dense kernel (structured: not a dense cap).
    points = []
    for kept in (32, 48):
        _, pred = predict_point(CHANNELS, channel_point(1.0, None, None, kept)["layers"])
        points.append(channel_point(0.1 + 2 * sum(pred.values()), 2 * pred["fc1"],
                                    2 * pred["fc2"], kept))
    new, new_profile, summary = refit(CHANNELS, profile, points)
    assert summary["layers_calibrated"] == ["fc1", "fc2"]
    assert summary["dense_caps_measured"] == []
    assert summary["mape_after"] < summary["mape_before"]
    fc1 = new["layers"]["fc1"]
    assert fc1["slope_out"] == pytest.approx(2 * 1e-4) and fc1["slope"] == pytest.approx(2e-5)
    assert new["overhead"] == pytest.approx(0.1) and summary["mape_after"] < 1e-9
    assert new_profile is not None
    deployed = new_profile["layers"][0]["samples"]
    assert [(s["kept_in"], s["kept_out"]) for s in deployed] == [(32, 32), (32, 48)]
