"""Fit structured (channel) latency models: per layer, latency at kept widths i (in), o (out),

    latency = intercept + slope * pairs + slope_out * o + slope_in * i,

pairs = the input-output channel pairs the weight connects (i x o, / groups; o for a depthwise
conv), with every coefficient >= 0 (non-negative least squares; RANSAC with a relative
threshold as costmodels.fit when there are 8 samples or more). pairs is the matrix multiply;
the linear terms carry per-channel work (bias, reading and writing activations, the attention
core per head), which a pure pairs model misses at small widths (a 1x1 conv at 25% of its
inputs ran 40% above the pairs line here).

Whole model: the profile's calibration samples (costmodels.structured) give the whole model's
latency at several uniform widths. What the layers do not explain there is fitted as
overhead + k x activation fraction (least squares, k >= 0); k is spread over the layers'
slope_out in proportion to their output positions, so a layer's cost also carries the
BatchNorm / activation / residual work on its outputs, and the overhead keeps the rest. The
whole-model MAPE over those samples is reported as "whole_model_mape". No torch here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.linear_model import LinearRegression
from sklearn.metrics import mean_absolute_percentage_error, r2_score

from spartan_service.costmodels.robust import RobustFitter, check_y, held_out_mape
from spartan_service.costmodels.schema import ProfileLayer

FEATURES = ("pairs", "kept_out", "kept_in")
_RANSAC_MIN = 8


class BilinearCostFitter(RobustFitter):
    """y = intercept_ + coef_ . [pairs, kept_out, kept_in], coef_ >= 0 (scikit-learn estimator;
    hyperparameters: robust.RobustFitter, RANSAC only with >= 8 samples).

    Learned: intercept_, coef_ (3,), inlier_mask_, n_features_in_.
    """

    def fit(self, X: ArrayLike, y: ArrayLike) -> BilinearCostFitter:
        x, yv = _check(X, y)
        self._check_params()
        self.n_features_in_ = 3
        self.inlier_mask_ = np.ones(len(x), dtype=bool)
        scale = np.maximum(np.abs(x).max(0), 1e-12)
        xs = x / scale
        est: Any = None
        if self.robust and len(x) >= _RANSAC_MIN:
            try:
                est, self.inlier_mask_ = self._ransac(xs, yv, min_samples=4)
            except ValueError:  # no consensus set: plain least squares
                est = None
        if est is None:
            est = LinearRegression(positive=True).fit(xs, yv)
        self.coef_ = np.maximum(np.asarray(est.coef_, dtype=np.float64), 0.0) / scale
        self.intercept_ = float(est.intercept_)
        return self

    def predict(self, X: ArrayLike) -> NDArray[np.float64]:
        if not hasattr(self, "coef_"):
            raise ValueError("this BilinearCostFitter is not fitted yet; call fit first")
        x = np.asarray(X, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != 3:
            raise ValueError(f"X must have shape (n, 3) [pairs, kept_out, kept_in], got {x.shape}")
        return np.asarray(self.intercept_ + x @ self.coef_, dtype=np.float64)


def _check(X: ArrayLike, y: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    x = np.asarray(X, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 3:
        raise ValueError(f"X must have shape (n, 3) [pairs, kept_out, kept_in], got {x.shape}")
    return x, check_y(x, y)


def features(lay: ProfileLayer) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """X [pairs, kept_out, kept_in] and y of a structured profile layer."""
    rows, y = [], []
    for s in lay.samples:
        extra = s.model_extra or {}
        if "kept_in" not in extra or "kept_out" not in extra:
            from spartan_service.costmodels.schema import ProfileError

            raise ProfileError("a structured sample needs kept_in and kept_out", lay.name,
                               "samples")
        rows.append([float(s.nnz_blocks), float(extra["kept_out"]), float(extra["kept_in"])])
        y.append(s.latency)
    return np.array(rows), np.array(y)


def fit_channel_layer(lay: ProfileLayer, robust: bool = True, random_state: int = 0
                      ) -> dict[str, Any]:
    """One cost-model layer entry from a structured profile layer."""
    x, y = features(lay)
    fitter = BilinearCostFitter(robust=robust, random_state=random_state).fit(x, y)
    extra = lay.model_extra or {}
    entry: dict[str, Any] = {
        "intercept": fitter.intercept_, "slope": float(fitter.coef_[0]),
        "slope_out": float(fitter.coef_[1]), "slope_in": float(fitter.coef_[2]),
        "block": list(lay.block), "structure": "channels",
        "r2": float(r2_score(y, fitter.predict(x))) if len(set(y.tolist())) > 1 else 1.0,
        "mape": held_out_mape(fitter, x, y, random_state=random_state), "shape": list(lay.shape),
        "n_samples": len(y), "inliers": int(fitter.inlier_mask_.sum()),
    }
    for key in ("kind", "groups", "depthwise", "head_dim", "positions", "full"):
        if key in extra:
            entry[key] = extra[key]
    if lay.dense_latency is not None:
        entry["dense_latency"] = lay.dense_latency
    return entry


def layer_latency(entry: dict[str, Any], kin: float, kout: float) -> float:
    """A fitted structured layer's latency at kept widths."""
    if entry.get("kind") == "conv" and entry.get("depthwise"):
        pairs = kout
    else:
        pairs = kin * kout / float(entry.get("groups", 1) or 1)
    return float(entry["intercept"] + entry["slope"] * pairs
                 + entry.get("slope_out", 0.0) * kout + entry.get("slope_in", 0.0) * kin)


def calibrate(layers: dict[str, dict[str, Any]], samples: list[dict[str, Any]],
              overhead: float) -> tuple[float, dict[str, Any]]:
    """(overhead, report): fold the whole-model residual into the layers (module doc)."""
    usable = [s for s in samples if set(s.get("widths", {})) == set(layers)]
    if len(usable) < 2:
        return overhead, {}
    pred = np.array([sum(layer_latency(layers[n], *s["widths"][n]) for n in layers)
                     for s in usable])
    y = np.array([float(s["latency"]) for s in usable])
    act = np.array([float(s["activation_fraction"]) for s in usable])
    resid = y - pred
    a = np.vstack([np.ones_like(act), act]).T
    (o0, k), *_ = np.linalg.lstsq(a, resid, rcond=None)
    if k < 0:  # the layers already explain the trend: a constant overhead
        k, o0 = 0.0, float(resid.mean())
    o0 = max(0.0, float(o0))
    total = sum(float(e.get("positions", 1.0)) * float(e["full"][1]) for e in layers.values()
                if "full" in e)
    if total > 0 and k > 0:
        for e in layers.values():
            if "full" in e:
                e["slope_out"] = e.get("slope_out", 0.0) + k * float(e.get("positions", 1.0)) \
                    / total
    fitted = np.array([o0 + sum(layer_latency(layers[n], *s["widths"][n]) for n in layers)
                       for s in usable])
    report = {"samples": len(usable), "activation_slope": float(k),
              "whole_model_mape": float(mean_absolute_percentage_error(y, fitted)),
              "uncalibrated_mape": float(mean_absolute_percentage_error(y, pred + overhead)),
              "points": [{"keep_fraction": s.get("keep_fraction"), "measured": float(m),
                          "predicted": float(p)} for s, m, p in zip(usable, y, fitted,
                                                                    strict=True)]}
    return o0, report
