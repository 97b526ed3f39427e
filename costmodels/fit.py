"""Fit per-layer linear latency models, latency = intercept + slope x nonzero blocks.

Timings on shared machines carry spikes (a preempted run reads 5-20x too slow), so the default
fit is RANSAC (Fischler & Bolles 1981, scikit-learn's RANSACRegressor) over a least-squares
line whose slope is constrained >= 0, with a *relative* residual threshold: a sample more than
`residual_threshold` (50%) off a candidate line is an outlier, and the line is refitted on the
inliers. Spikes then hardly move the slope (tests/costmodels/test_fit.py checks a few percent),
where ordinary least squares moves it several-fold. No torch here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.linear_model import HuberRegressor, LinearRegression
from sklearn.metrics import r2_score

from spartan_service.costmodels.robust import RobustFitter, check_y, held_out_mape
from spartan_service.costmodels.schema import Profile, validate_cost_model, validate_profile

log = logging.getLogger(__name__)


class LinearCostFitter(RobustFitter):
    """y = intercept_ + slope_ * x with slope_ >= 0, fitted robustly (scikit-learn estimator;
    hyperparameters: robust.RobustFitter).

    Learned: intercept_, slope_, coef_ (= [slope_]), inlier_mask_, n_features_in_.
    """

    def fit(self, X: ArrayLike, y: ArrayLike) -> LinearCostFitter:
        x, yv = _check_xy(X, y)
        self._check_params()
        self.n_features_in_ = 1
        self.inlier_mask_ = np.ones(len(x), dtype=bool)
        if len(np.unique(x)) < 2:  # no slope to see: a constant
            self.intercept_, self.slope_ = float(np.median(yv)), 0.0
        else:
            scale = float(np.abs(x).max())  # well-conditioned solves for nnz in the millions
            xs = (x / scale).reshape(-1, 1)
            intercept, slope = self._fit_scaled(xs, yv)
            self.intercept_, self.slope_ = intercept, slope / scale
        self.coef_ = np.array([self.slope_])
        return self

    def _fit_scaled(self, xs: NDArray[np.float64], y: NDArray[np.float64]
                    ) -> tuple[float, float]:
        if not self.robust:
            ls = LinearRegression(positive=True).fit(xs, y)
            return float(ls.intercept_), float(ls.coef_[0])
        try:
            est, self.inlier_mask_ = self._ransac(xs, y, min_samples=2)
        except ValueError as exc:  # no consensus set at all: fall back to Huber
            log.warning("RANSAC found no consensus (%s); using a Huber fit", exc)
            hub = HuberRegressor(alpha=0.0, max_iter=1000).fit(xs, y)
            if hub.coef_[0] >= 0:
                return float(hub.intercept_), float(hub.coef_[0])
            return float(np.median(y)), 0.0
        return float(est.intercept_), max(0.0, float(est.coef_[0]))

    def predict(self, X: ArrayLike) -> NDArray[np.float64]:
        if not hasattr(self, "slope_"):
            raise ValueError("this LinearCostFitter is not fitted yet; call fit first")
        x = _as_column(X)
        return np.asarray(self.intercept_ + self.slope_ * x, dtype=np.float64)


def _as_column(X: ArrayLike) -> NDArray[np.float64]:
    x = np.asarray(X, dtype=np.float64)
    if x.ndim == 2 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 1:
        raise ValueError(f"X must have shape (n,) or (n, 1), got {x.shape}")
    return x


def _check_xy(X: ArrayLike, y: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    x = _as_column(X)
    return x, check_y(x, y)


def cross_val_mape(fitter: LinearCostFitter, X: ArrayLike, y: ArrayLike, n_splits: int = 5,
                   random_state: int = 0) -> float:
    """MAPE of held-out predictions, KFold over the samples (every sample held out once)."""
    x, yv = _check_xy(X, y)
    return held_out_mape(fitter, x, yv, n_splits, random_state)


def fit_profile(profile: dict[str, Any] | Profile, robust: bool = True,
                random_state: int = 0) -> dict[str, Any]:
    """Cost-model file dict (DESIGN.md) from a profile: per layer intercept, slope (ms per
    nonzero block), block, r2 (all samples) and mape (KFold cross-validated). Raises
    ProfileError for a bad profile."""
    from spartan_service.costmodels import fit_channels

    prof = validate_profile(profile)
    layers: dict[str, Any] = {}
    for lay in prof.layers:
        if (lay.model_extra or {}).get("structure") == "channels":
            layers[lay.name] = fit_channels.fit_channel_layer(lay, robust, random_state)
            continue
        x = np.array([s.nnz_blocks for s in lay.samples], dtype=np.float64)
        y = np.array([s.latency for s in lay.samples], dtype=np.float64)
        fitter = LinearCostFitter(robust=robust, random_state=random_state).fit(x, y)
        entry: dict[str, Any] = {
            "intercept": fitter.intercept_, "slope": fitter.slope_, "block": list(lay.block),
            "r2": float(r2_score(y, fitter.predict(x))),
            "mape": cross_val_mape(fitter, x, y, random_state=random_state),
            "shape": list(lay.shape), "n_samples": len(y),
            "inliers": int(fitter.inlier_mask_.sum()),
        }
        if lay.kernel is not None:
            entry["kernel"] = lay.kernel
        if lay.dense_latency is not None:
            entry["dense_latency"] = lay.dense_latency
            # Piecewise: the deployed export runs dense wherever the sparse kernel is slower,
            # so above this many blocks the layer costs its dense latency (flat), not the line.
            if fitter.slope_ > 0 and lay.dense_latency > fitter.intercept_:
                entry["crossover_nnz"] = (lay.dense_latency - fitter.intercept_) / fitter.slope_
        layers[lay.name] = entry
        log.info("%s: %.4g + %.4g x nnz (r2 %.3f, cv mape %.3f)", lay.name, entry["intercept"],
                 entry["slope"], entry["r2"], entry["mape"])
    out: dict[str, Any] = {"unit": prof.unit, "device": prof.device, "layers": layers}
    if prof.machine is not None:
        out["machine"] = prof.machine
    hardware = (prof.model_extra or {}).get("hardware")
    if hardware is not None:  # where it was measured (spartan_service.costmodels.hardware)
        out["hardware"] = hardware
    if prof.overhead is not None:
        out["overhead"] = prof.overhead
    extra = prof.model_extra or {}
    if extra.get("structure") == "channels":
        out["structure"] = "channels"
        overhead, report = fit_channels.calibrate(layers, list(extra.get("calibration") or []),
                                                  prof.overhead or 0.0)
        if report:
            out["overhead"], out["calibration"] = overhead, report
    excludes = (prof.model_extra or {}).get("overhead_excludes")
    if excludes:  # layers whose dense time the profiler took off the overhead
        out["overhead_excludes"] = list(excludes)
    from spartan_service.costmodels.checks import fit_warnings

    warnings = fit_warnings(out)
    if warnings:
        out["warnings"] = warnings
    validate_cost_model(out)
    return out


def piecewise(layer: Any, nnz: float) -> float:
    """A fitted weights layer's latency at `nnz` blocks: its line, but never above its dense
    latency (the export keeps the dense kernel where the sparse one is slower)."""
    line = float(layer.intercept + layer.slope * nnz)
    dense = (layer.model_extra or {}).get("dense_latency")
    return min(line, float(dense)) if isinstance(dense, (int, float)) else line


def predict_latency(cost_model: Mapping[str, Any], nnz_blocks: Mapping[str, int],
                    include_overhead: bool = True) -> float:
    """overhead + sum over layers of min(intercept + slope x nnz_blocks[layer], the layer's
    dense latency when known) (every layer of the cost model must be given, none other)."""
    cm = validate_cost_model(dict(cost_model))
    missing = sorted(set(cm.layers) - set(nnz_blocks))
    unknown = sorted(set(nnz_blocks) - set(cm.layers))
    if missing or unknown:
        raise ValueError(f"nnz_blocks do not match the cost model: missing {missing}, "
                         f"unknown {unknown}")
    total = sum(piecewise(lay, nnz_blocks[name]) for name, lay in cm.layers.items())
    overhead = (cm.overhead or 0.0) if include_overhead else 0.0
    return total + overhead
