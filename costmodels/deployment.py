"""A cost model checked against deployed models, and refitted from them. No torch.

After training, the worker measures the exported model on its own hardware at the cost model's
batch size: the whole model, and each cost-model layer on the input it gets in the deployed
model. A *point* is one such measurement:

    {"job_id": ..., "batch": 64, "measured": 0.41,
     "layers": [{"name": "fc1", "nnz_blocks": 812, "measured": 0.052}, ...]}

A structured (channels) cost model predicts a layer from its kept widths, so its points' layers
also carry `kept_in` and `kept_out` (the widths of the shrunk model; nnz_blocks is then the
input-output channel pairs, as in a structured profile) and are predicted with
costmodels.fit_channels.layer_latency.

Points are held out: the cost model never saw them. `evaluate` predicts each point with a cost
model (any version: the prediction is recomputed from the layers' nonzero blocks) and reports
the error; above ERROR_THRESHOLD (15%, the same tolerance as a kept latency promise) it says
the model needs a refit. `refit` folds the points in: each layer's line is scaled by the median
ratio of its measured to predicted time in the deployed models (its dense cap set, where the
export kept the dense kernel), and the overhead (everything
outside the layers) becomes the median of what the whole-model measurements leave after the
layers, so that systematic errors of the isolated-layer profile (the kernel the export chose,
activation layouts, caches, framework overhead) are taken from the deployed models themselves.
It works the same for a model registered without its profile.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from spartan_service.costmodels.schema import CostModel, validate_cost_model

ERROR_THRESHOLD = 0.15


def predict_point(cost_model: Mapping[str, Any] | CostModel, layers: Sequence[Mapping[str, Any]]
                  ) -> tuple[float, dict[str, float]]:
    """(whole-model prediction, per-layer predictions) in ms for a point's layers, as
    costmodels.bridge.predict_cost (weights) or the channel Sparsifier's cost of the kept
    widths (channels) gives it. Every cost-model layer must be in the point, with its widths
    where the layer is structured (ValueError otherwise)."""
    cm = validate_cost_model(cost_model if isinstance(cost_model, CostModel)
                             else dict(cost_model))
    given = {str(lay["name"]): lay for lay in layers}
    missing = sorted(set(cm.layers) - set(given))
    if missing:
        raise ValueError(f"the point lacks cost-model layers {', '.join(missing)}")
    per_layer = {name: _layer_prediction(name, lay, given[name])
                 for name, lay in cm.layers.items()}
    return (cm.overhead or 0.0) + sum(per_layer.values()), per_layer


def weights_latency_range(cost_model: Mapping[str, Any] | CostModel) -> tuple[float, float]:
    """(fixed, dense) ms of a weights cost model: overhead and intercepts, which no sparsity
    removes, and the dense model's prediction (each layer at most its dense time). A latency
    budget is feasible strictly between the two."""
    cm = validate_cost_model(cost_model if isinstance(cost_model, CostModel)
                             else dict(cost_model))
    full = [{"name": n, "nnz_blocks": (lay.shape or [0, 0])[0] * (lay.shape or [0, 0])[1]}
            for n, lay in cm.layers.items()]
    dense, _ = predict_point(cm, full)
    return (cm.overhead or 0.0) + sum(lay.intercept for lay in cm.layers.values()), dense


def _layer_prediction(name: str, entry: Any, point: Mapping[str, Any]) -> float:
    from spartan_service.costmodels.fit import piecewise  # the line, capped at the dense time
    from spartan_service.costmodels.fit_channels import layer_latency

    if entry.structure != "channels":
        return piecewise(entry, int(point["nnz_blocks"]))
    if point.get("kept_in") is None or point.get("kept_out") is None:
        raise ValueError(f"the point gives no kept widths for structured layer {name!r}")
    return layer_latency(entry.model_dump(exclude_none=True), float(point["kept_in"]),
                         float(point["kept_out"]))


def _error(measured: float, predicted: float) -> float:
    return abs(predicted - measured) / measured if measured > 0 else 0.0


def evaluate(cost_model: Mapping[str, Any] | CostModel, points: Sequence[Mapping[str, Any]]
             ) -> dict[str, Any]:
    """The cost model's error on deployed models: whole-model MAPE (the promise's error),
    per-layer MAPE, the worst point, and whether it needs a refit."""
    rows: list[dict[str, Any]] = []
    errors: list[float] = []
    layer_errors: list[float] = []
    for p in points:
        try:
            predicted, per_layer = predict_point(cost_model, p["layers"])
        except ValueError:
            continue  # a point of another model's layers (not comparable)
        measured = float(p["measured"])
        errors.append(_error(measured, predicted))
        rows.append({"job_id": p.get("job_id"), "batch": p.get("batch"), "measured": measured,
                     "predicted": predicted, "error": errors[-1]})
        for lay in p["layers"]:
            if lay.get("measured") and str(lay["name"]) in per_layer:
                layer_errors.append(_error(float(lay["measured"]), per_layer[str(lay["name"])]))
    if not rows:
        return {"points": 0, "mape": None, "layer_mape": None, "max_error": None,
                "threshold": ERROR_THRESHOLD, "needs_refit": False, "jobs": []}
    mape = statistics.fmean(errors)
    out: dict[str, Any] = {
        "points": len(rows), "mape": mape,
        "layer_mape": statistics.fmean(layer_errors) if layer_errors else None,
        "max_error": max(errors), "threshold": ERROR_THRESHOLD,
        "needs_refit": mape > ERROR_THRESHOLD, "jobs": rows[-50:],
    }
    if out["needs_refit"]:
        out["message"] = (f"predictions are off by {mape:.0%} on average over {len(rows)} "
                          f"deployed model(s) (more than {ERROR_THRESHOLD:.0%}): refit it "
                          "with these measurements folded in")
    return out


def refit(cost_model: Mapping[str, Any], profile: Mapping[str, Any] | None,
          points: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], dict[str, Any] | None,
                                                       dict[str, Any]]:
    """(new cost model, its profile with the deployed samples appended, a summary with the
    error on `points` before and after). ValueError when no point fits this cost model.

    Per layer, where the export ran a sparse kernel (or the layer is structured: its dense
    kernel at the kept widths is what the fit describes), the line is scaled by the median
    ratio of measured to predicted time over the deployed points (the deployed model's
    activation layout and caches, which the isolated profile did not see); where a weights
    layer ran the dense kernel, the measured time becomes its dense cap (the piecewise model's
    flat part); then
    the overhead becomes the median of what each whole-model measurement leaves after the
    layers, or, when the layers already add up to more than the whole model, every layer is
    scaled down to the whole-model times."""
    usable = [p for p in points if evaluate(cost_model, [p])["points"]]
    if not usable:
        raise ValueError("no deployment points of this cost model's layers to fold in")
    new = json.loads(json.dumps(dict(cost_model)))
    structured = {name for name, lay in new["layers"].items()
                  if lay.get("structure") == "channels"}
    ratios: dict[str, list[float]] = {}
    dense_times: dict[str, list[float]] = {}
    for p in usable:
        _, per_layer = predict_point(cost_model, p["layers"])
        for lay in p["layers"]:
            name, measured = str(lay["name"]), lay.get("measured")
            if not measured or name not in per_layer:
                continue
            if name not in structured and lay.get("kernel", "dense") == "dense":
                dense_times.setdefault(name, []).append(float(measured))
            elif per_layer[name] > 0:
                ratios.setdefault(name, []).append(float(measured) / per_layer[name])
    for name, values in ratios.items():  # a sparse kernel ran: its line was off
        _scale(new["layers"][name], statistics.median(values))
    for name, values in dense_times.items():
        # The export ran it dense: that says what the dense cap costs, not how the sparse
        # line slopes (a flat time divided into the line would flatten the slope, and the
        # allocation would then spend everything on that layer).
        new["layers"][name]["dense_latency"] = statistics.median(values)
    new["overhead"] = 0.0
    sums = [sum(predict_point(new, p["layers"])[1].values()) for p in usable]
    rest = [float(p["measured"]) - total for p, total in zip(usable, sums, strict=True)]
    if statistics.median(rest) >= 0:
        new["overhead"] = statistics.median(rest)
    else:
        # The layers, timed alone, add up to more than the whole model measured (a burst of
        # load while they were timed, or work the deployed model overlaps): the whole-model
        # times are the promise's measure, so every layer is scaled down to them.
        g = statistics.median(float(p["measured"]) / total
                              for p, total in zip(usable, sums, strict=True) if total > 0)
        for entry in new["layers"].values():
            _scale(entry, g)
    validate_cost_model(new)
    new_profile = _with_deployed_samples(profile, usable)
    before, after = evaluate(cost_model, usable), evaluate(new, usable)
    summary = {"points": len(usable), "layers_calibrated": sorted(ratios),
               "dense_caps_measured": sorted(dense_times),
               "mape_before": before["mape"], "mape_after": after["mape"],
               "overhead_before": validate_cost_model(dict(cost_model)).overhead,
               "overhead_after": new["overhead"]}
    return new, new_profile, summary


def _scale(entry: dict[str, Any], r: float) -> None:
    """A layer's whole cost curve times r (its line, structured terms and dense cap; the
    crossover stays)."""
    for key in ("intercept", "slope", "slope_out", "slope_in", "dense_latency"):
        if isinstance(entry.get(key), (int, float)):
            entry[key] *= r
    entry["calibration"] = r * float(entry.get("calibration", 1.0))


def _with_deployed_samples(profile: Mapping[str, Any] | None,
                           points: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The profile with each deployed (nnz_blocks, latency) appended to its layer, marked
    `deployed` (a record of what the refit saw)."""
    if profile is None:
        return None
    out = json.loads(json.dumps(dict(profile)))
    by_name = {lay["name"]: lay for lay in out.get("layers", [])}
    for p in points:
        for lay in p["layers"]:
            target = by_name.get(str(lay["name"]))
            if target is not None and lay.get("measured"):
                sample = {"nnz_blocks": int(lay["nnz_blocks"]),
                          "latency": float(lay["measured"]), "deployed": True,
                          "job_id": p.get("job_id")}
                for key in ("kept_in", "kept_out"):  # a structured layer's widths
                    if lay.get(key) is not None:
                        sample[key] = int(lay[key])
                target["samples"].append(sample)
    return out
