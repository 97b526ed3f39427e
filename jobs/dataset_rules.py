"""What arrays `x` and `y` a job can train on: the one owner of these rules, without torch.

The API checks an uploaded file against them chunk by chunk as it reads it (jobs.uploads, for
classification: an upload's task is not known yet, and classification is the default), the
worker checks the arrays it loads for the job's task (worker.data), and .npy datasets on shared
storage are checked by their headers and label scans (jobs.data_arrays at submit and on the
worker, worker.storage when loading); all call these functions.
- x: numeric, shape (N, ...) with N >= 2 examples, finite values;
- classification: y numeric, shape (N,), whole numbers >= 0 and below num_classes when it is
  given (float labels are cast);
- regression: y numeric, shape (N,) or (N, outputs...), finite values;
- causal_lm (arrays of token ids): x of shape (N, L), no y needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

NUMERIC_KINDS = "biuf"  # numpy dtype kinds: bool, signed, unsigned, float


class DatasetError(ValueError):
    """The arrays break one of the rules; the message says which, `field` ("x" or "y") which
    array it is about."""

    def __init__(self, msg: str, field: str = "y") -> None:
        super().__init__(msg)
        self.field = field


def check_dtype(name: str, dtype: np.dtype) -> None:
    if dtype.kind not in NUMERIC_KINDS:
        raise DatasetError(f"{name} must be numeric, got {dtype}", name)


def check_shapes(x_shape: Sequence[int], y_shape: Sequence[int] | None,
                 task: str = "classification", min_examples: int = 2) -> None:
    """x (N, ...) (causal_lm: token ids (N, L)); y per task, None only for causal_lm; the
    same N in both, at least `min_examples` (a separate validation set may hold fewer)."""
    xs = list(x_shape)
    if task == "causal_lm" and len(xs) != 2:
        raise DatasetError(f"causal_lm needs token ids of shape (N, L), got {xs}", "x")
    if len(xs) < 2:
        raise DatasetError(f"x must have shape (N, ...) with N examples, got {xs}", "x")
    if y_shape is None:
        if task != "causal_lm":
            raise DatasetError(f"task '{task}' needs labels or targets: y")
    else:
        ys = list(y_shape)
        if task == "regression" and not ys:
            raise DatasetError(f"y must have shape (N,) or (N, outputs...), got {ys}")
        if task == "classification" and len(ys) != 1:
            raise DatasetError(f"y must be 1-D (one class label per example), got shape {ys}")
        if xs[0] != ys[0]:
            raise DatasetError(f"{xs[0]} examples in x but {ys[0]} labels in y")
    if xs[0] < min_examples:
        raise DatasetError(f"need at least {min_examples} examples, got {xs[0]}", "x")


@dataclass
class Findings:
    """What the value rules need to know of x and y, gathered over chunks of any size."""

    x_nonfinite: bool = False
    y_nonfinite: bool = False
    y_fraction: bool = False
    y_min: float = math.inf
    y_max: float = -math.inf

    def feed(self, name: str, chunk: np.ndarray) -> None:
        if chunk.size == 0 or name not in ("x", "y"):
            return
        finite = chunk.dtype.kind != "f" or bool(np.isfinite(chunk).all())
        if name == "x":
            self.x_nonfinite |= not finite
            return
        self.y_nonfinite |= not finite
        if chunk.dtype.kind == "f":
            self.y_fraction |= not (finite and np.array_equal(chunk, np.round(chunk)))
        values = chunk if finite else chunk[np.isfinite(chunk)]
        if values.size:
            self.y_min = min(self.y_min, float(values.min()))
            self.y_max = max(self.y_max, float(values.max()))


def check_values(findings: Findings, task: str = "classification",
                 num_classes: int | None = None, y_name: str = "y") -> None:
    """The value rules; for classification, labels below `num_classes` when it is given.
    `y_name` names the labels in messages (a file, a column)."""
    if findings.x_nonfinite:
        raise DatasetError("x holds NaN or infinite values", "x")
    if task == "regression":
        if findings.y_nonfinite:
            raise DatasetError("y holds NaN or infinite values")
        return
    if findings.y_fraction:
        raise DatasetError(f"{y_name} must hold integer class labels, not fractions")
    if findings.y_min < 0:
        raise DatasetError(f"{y_name} holds label {findings.y_min:g}; class labels must be "
                           ">= 0")
    if num_classes is not None and findings.y_max >= num_classes:
        raise DatasetError(f"{y_name} holds label {findings.y_max:g}, out of range for num_classes "
                           f"{num_classes}")


def count_classes(findings: Findings, num_classes: int | None = None) -> int:
    """The classes of checked labels: `num_classes` when given, else the largest label + 1
    (at least 2)."""
    if num_classes is not None:
        return num_classes
    return max(int(findings.y_max) + 1 if findings.y_max > -math.inf else 0, 2)


def check_arrays(x: np.ndarray, y: np.ndarray, task: str = "classification") -> None:
    """Every rule, over arrays in memory."""
    check_dtype("x", x.dtype)
    check_dtype("y", y.dtype)
    check_shapes(x.shape, y.shape, task)
    findings = Findings()
    findings.feed("x", x)
    findings.feed("y", y)
    check_values(findings, task)
