"""What the weights (fit.py) and channels (fit_channels.py) cost fitters share: their
hyperparameters, the non-negative RANSAC fit with a relative residual threshold, the checks of
X and y, and the cross-validated MAPE. No torch here."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.linear_model import LinearRegression, RANSACRegressor
from sklearn.metrics import mean_absolute_percentage_error
from sklearn.model_selection import KFold


def relative_error(y_true: NDArray[np.float64], y_pred: NDArray[np.float64]
                   ) -> NDArray[np.float64]:
    scale = np.maximum(np.abs(y_pred), 1e-12 * (np.abs(y_true).max() + 1e-300))
    return np.asarray(np.abs(y_true - y_pred) / scale)


class RobustFitter(RegressorMixin, BaseEstimator):  # type: ignore[misc]
    """A scikit-learn estimator whose `__init__` only stores the hyperparameters.

    robust: RANSAC with a relative residual threshold; False: plain non-negative least squares.
    residual_threshold: relative deviation from a candidate fit beyond which a sample is an
        outlier (robust fit only).
    max_trials, random_state: RANSAC's; the default seed makes fits reproducible.
    """

    def __init__(self, robust: bool = True, residual_threshold: float = 0.5,
                 max_trials: int = 200, random_state: int | None = 0) -> None:
        self.robust = robust
        self.residual_threshold = residual_threshold
        self.max_trials = max_trials
        self.random_state = random_state

    def _check_params(self) -> None:
        if self.residual_threshold <= 0:
            raise ValueError(f"residual_threshold must be > 0, got {self.residual_threshold}")

    def _ransac(self, xs: NDArray[np.float64], y: NDArray[np.float64], min_samples: int
                ) -> tuple[Any, NDArray[np.bool_]]:
        """(fitted non-negative LinearRegression, inlier mask); ValueError when RANSAC finds
        no consensus set."""
        with warnings.catch_warnings():  # candidate sets of one inlier: "R^2 undefined"
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            ransac = RANSACRegressor(
                LinearRegression(positive=True), min_samples=min_samples,
                residual_threshold=self.residual_threshold, loss=relative_error,
                max_trials=self.max_trials, random_state=self.random_state).fit(xs, y)
        return ransac.estimator_, np.asarray(ransac.inlier_mask_, dtype=bool)


def check_y(x: NDArray[np.float64], y: Any) -> NDArray[np.float64]:
    """y as floats, one per row of x (x already shaped); at least 2 samples, all finite."""
    yv = np.asarray(y, dtype=np.float64)
    if yv.ndim != 1 or len(yv) != len(x):
        raise ValueError(f"y must have shape ({len(x)},), got {yv.shape}")
    if len(x) < 2:
        raise ValueError(f"need at least 2 samples, got {len(x)}")
    if not (np.isfinite(x).all() and np.isfinite(yv).all()):
        raise ValueError("X and y must be finite")
    return yv


def held_out_mape(fitter: RobustFitter, x: NDArray[np.float64], y: NDArray[np.float64],
                  n_splits: int = 5, random_state: int = 0) -> float:
    """MAPE of held-out predictions, KFold over the samples (every sample held out once)."""
    folds = KFold(n_splits=min(n_splits, len(x)), shuffle=True, random_state=random_state)
    pred = np.empty_like(y)
    for train, test in folds.split(x):
        pred[test] = clone(fitter).fit(x[train], y[train]).predict(x[test])
    return float(mean_absolute_percentage_error(y, pred))
