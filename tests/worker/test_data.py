"""The dataset registry: built-ins without downloads, uploads without pickles, a seeded split
and standardised inputs."""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.numpy import save

from spartan_service.jobs.upload_store import StoredUpload, UploadStore
from spartan_service.worker.data import load_dataset, split


def test_builtins_have_the_catalog_shapes() -> None:
    digits = load_dataset("digits", {}, 0.2, seed=0)
    assert digits.input_shape == (1, 8, 8) and digits.num_classes == 10
    assert len(digits.y_train) + len(digits.y_val) == 1797 and len(digits.y_val) == 359
    assert digits.x_train.dtype == torch.float32 and digits.y_train.dtype == torch.int64
    teacher = load_dataset("teacher", {"num_samples": 300, "dim": 6, "classes": 3}, 0.1, 0)
    assert teacher.input_shape == (6,) and teacher.num_classes == 3
    assert set(teacher.y_train.tolist()) == {0, 1, 2}


def test_mnist1d_is_generated_locally_and_leaves_global_rngs_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import requests

    def no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("mnist1d tried to download")

    monkeypatch.setattr(requests, "get", no_network)
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    data = load_dataset("mnist1d", {"num_samples": 200, "length": 24}, 0.25, seed=1)
    assert np.random.rand() == expected
    assert data.input_shape == (1, 24) and len(data.y_train) == 150 and data.num_classes == 10


def test_split_is_seeded_disjoint_and_standardised() -> None:
    train, val = split(100, 0.3, seed=4)
    again, _ = split(100, 0.3, seed=4)
    other, _ = split(100, 0.3, seed=5)
    assert len(val) == 30 and not set(train) & set(val) and set(train) | set(val) == set(range(100))
    assert np.array_equal(train, again) and not np.array_equal(train, other)
    assert split(2, 0.9, 0)[0].size == 1  # always one example on each side
    data = load_dataset("digits", {}, 0.2, seed=0)
    flat = data.x_train.flatten(1)
    assert flat.mean(0).abs().max() < 1e-4
    assert torch.isfinite(data.x_val).all()  # constant pixels are not divided by zero


def stored(tmp_path: Path, kind: str, data: bytes) -> StoredUpload:
    """An upload as the worker gets it: in the upload store, with its kind."""
    store = UploadStore(tmp_path / "store")
    upload_id = f"u{len(list(tmp_path.rglob('file')))}"
    with store.writer(upload_id) as w:
        w.write(data)
    return StoredUpload(store, upload_id, kind)


def npz_file(path: Path, **arrays: Any) -> StoredUpload:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return stored(path.parent, "npz", buffer.getvalue())


def test_uploaded_npz_and_safetensors(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(50, 3, 4)), rng.integers(0, 4, 50)
    data = load_dataset("upload", {}, 0.2, 0, upload=npz_file(tmp_path / "d.npz", x=x, y=y))
    assert data.input_shape == (3, 4) and data.num_classes == 4 and len(data.y_val) == 10
    st = save({"x": x.astype(np.float32), "y": y.astype(np.int64)})
    assert load_dataset("upload", {}, 0.2, 0,
                        upload=stored(tmp_path, "safetensors", st)).num_classes == 4


@pytest.mark.parametrize(("arrays", "needle"), [
    ({"x": np.zeros((4, 2))}, "missing: y"),
    ({"x": np.zeros((4, 2)), "y": np.array([0, 1, 2])}, "4 examples in x but 3 labels in y"),
    ({"x": np.zeros((4, 2)), "y": np.array([0, 1, -1, 2])}, ">= 0"),
    ({"x": np.zeros((4, 2)), "y": np.array([0, 0.5, 1, 1])}, "integer class labels"),
    ({"x": np.full((4, 2), np.nan), "y": np.array([0, 1, 0, 1])}, "NaN"),
    ({"x": np.zeros(4), "y": np.array([0, 1, 0, 1])}, r"x must have shape \(N, \.\.\.\)"),
])
def test_bad_uploads_are_refused(tmp_path: Path, arrays: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        load_dataset("upload", {}, 0.2, 0, upload=npz_file(tmp_path / "d.npz", **arrays))


class Evil:
    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.mkdir, (Path("/tmp/spartan-worker-pickle-was-run"),))


def test_pickles_are_never_loaded(tmp_path: Path) -> None:
    obj = npz_file(tmp_path / "o.npz", x=np.array([Evil()], dtype=object), y=np.array([0]))
    with pytest.raises(ValueError, match="pickled objects"):
        load_dataset("upload", {}, 0.2, 0, upload=obj)
    raw = stored(tmp_path, "npz", pickle.dumps({"x": Evil(), "y": 1}))
    with pytest.raises(ValueError):
        load_dataset("upload", {}, 0.2, 0, upload=raw)
    assert not Path("/tmp/spartan-worker-pickle-was-run").exists()
    with pytest.raises(ValueError, match="cannot read uploaded data"):
        load_dataset("upload", {}, 0.2, 0, upload=stored(tmp_path, "safetensors", b"\x05" * 12))
    gone = StoredUpload(UploadStore(tmp_path / "store"), "gone", "npz")
    with pytest.raises(ValueError, match="missing from the upload store"):
        load_dataset("upload", {}, 0.2, 0, upload=gone)
