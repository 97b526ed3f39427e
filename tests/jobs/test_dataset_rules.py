"""The dataset rules have one owner (jobs.dataset_rules): the upload check and the worker's
loader refuse the same arrays with the same words, and chunked findings equal whole ones."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from spartan_service.jobs.dataset_rules import (
    DatasetError,
    Findings,
    check_arrays,
    check_shapes,
    check_values,
    count_classes,
)
from spartan_service.jobs.upload_store import StoredUpload, UploadStore
from spartan_service.jobs.uploads import UploadError, inspect
from spartan_service.worker.data import load_dataset

X = np.zeros((6, 3), np.float32)
Y = np.array([0, 1, 2, 0, 1, 2])

BAD = [
    ({"x": X, "y": Y[:4]}, "6 examples in x but 4 labels in y"),
    ({"x": X[:, 0], "y": Y}, "x must have shape (N, ...)"),
    ({"x": X, "y": Y.reshape(3, 2)}, "y must be 1-D"),
    ({"x": X[:1], "y": Y[:1]}, "at least 2 examples"),
    ({"x": X, "y": Y + 0.5}, "integer class labels, not fractions"),
    ({"x": X, "y": Y - 1}, ">= 0"),
    ({"x": np.full_like(X, np.inf), "y": Y}, "NaN or infinite"),
]


def npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


@pytest.mark.parametrize(("arrays", "words"), BAD)
def test_upload_and_worker_refuse_the_same_arrays_alike(
    tmp_path: Path, arrays: dict[str, np.ndarray], words: str
) -> None:
    data = npz(**arrays)
    with pytest.raises(UploadError) as at_upload:
        inspect("d.npz", data)
    uploads = UploadStore(tmp_path)
    with uploads.writer("d") as w:
        w.write(data)
    with pytest.raises(DatasetError) as at_worker:
        load_dataset("upload", {}, 0.2, 0, upload=StoredUpload(uploads, "d", "npz"))
    assert words in str(at_upload.value) and words in str(at_worker.value)
    assert str(at_upload.value) == f"data: {at_worker.value}"


def test_regression_admits_real_and_two_dimensional_targets() -> None:
    check_arrays(X, np.linspace(-1, 1, 12).reshape(6, 2), "regression")
    with pytest.raises(DatasetError, match="y holds NaN"):
        check_arrays(X, np.array([0.5, np.nan, 1, 2, 3, 4]), "regression")
    check_arrays(X, np.zeros((6, 2, 2)), "regression")  # outputs flattened by the loaders
    with pytest.raises(DatasetError, match=r"y must have shape \(N,\) or \(N, outputs\.\.\.\)"):
        check_shapes([6, 3], [], "regression")


def test_shape_errors_say_which_array_and_causal_lm_needs_no_labels() -> None:
    check_shapes([4, 16], None, "causal_lm")
    cases = [(([4], [4]), "x"), (([4, 2], [3]), "y"), (([1, 2], [1]), "x"),
             (([4, 2], None), "y"), (([4, 2], [4, 2]), "y")]
    for (xs, ys), field in cases:
        with pytest.raises(DatasetError) as info:
            check_shapes(xs, ys)
        assert info.value.field == field, (xs, ys)
    with pytest.raises(DatasetError, match=r"token ids of shape \(N, L\)") as info:
        check_shapes([4, 2, 2], None, "causal_lm")
    assert info.value.field == "x"
    check_shapes([1, 2], [1], min_examples=1)  # a validation set of one


def test_non_numeric_arrays_are_refused() -> None:
    with pytest.raises(DatasetError, match="x must be numeric"):
        check_arrays(np.array([["a"], ["b"]]), np.array([0, 1]))


def test_findings_over_chunks_equal_findings_over_the_whole() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 1000).astype(np.float64)
    y[777] = -0.5
    whole, chunked = Findings(), Findings()
    whole.feed("y", y)
    for chunk in np.array_split(y, 7):
        chunked.feed("y", chunk)
    assert whole == chunked
    assert (whole.y_fraction, whole.y_min, whole.y_max) == (True, -0.5, 4.0)
    with pytest.raises(DatasetError, match="y holds label 4, out of range for num_classes 4"):
        check_values(Findings(y_min=0, y_max=4), num_classes=4)
    assert count_classes(Findings(y_min=0, y_max=4)) == 5
    assert count_classes(Findings(y_min=0, y_max=0)) == 2
