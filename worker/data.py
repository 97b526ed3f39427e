"""The dataset registry: built-in datasets that need no download, uploads, entry-point factories.

- digits: scikit-learn's 8x8 handwritten digits (1797 examples, 10 classes), as (1, 8, 8).
- mnist1d: Greydanus's MNIST-1D ("Scaling down deep learning", 2020), generated on the spot by
  the `mnist1d` package (its make_dataset only computes; nothing is downloaded), as (1, length).
- teacher: Gaussian inputs labelled by a random one-hidden-layer tanh network (argmax of its
  logits, centred so the classes are roughly balanced).
- upload: an .npz (read with allow_pickle=False) or .safetensors file holding `x` (examples
  first) and `y` (integer labels).
- factories under the `spartan.datasets` entry-point group, called with the kwargs and
  returning (x, y) or {"x": ..., "y": ...} as numpy arrays or tensors.
The validation split is a seeded permutation; inputs are standardised per feature with the
training split's mean and standard deviation.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import numpy as np
import torch
from torch import Tensor

from spartan_service.jobs import catalog, dataset_rules
from spartan_service.jobs.safetensors_file import numpy_arrays
from spartan_service.jobs.upload_store import StoredUpload

Shape = tuple[int, ...]


@dataclass
class Dataset:
    """Standardised float32 inputs and int64 labels, split into train and validation."""

    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    input_shape: Shape
    num_classes: int

    def to(self, device: torch.device) -> Dataset:
        return Dataset(self.x_train.to(device), self.y_train.to(device), self.x_val.to(device),
                       self.y_val.to(device), self.input_shape, self.num_classes)


def _digits(kw: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.data.reshape(-1, 1, 8, 8), bunch.target


def _mnist1d(kw: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.final_seq_length, args.seed = (
        kw["num_samples"], kw["length"], kw["seed"])
    # make_dataset reseeds numpy's and Python's global generators: keep ours untouched.
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    x = np.concatenate([data["x"], data["x_test"]])
    y = np.concatenate([data["y"], data["y_test"]])
    return x.reshape(len(x), 1, -1), y


def _teacher(kw: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(kw["seed"])
    n, d, h, k = kw["num_samples"], kw["dim"], kw["hidden"], kw["classes"]
    x = rng.standard_normal((n, d))
    w1 = rng.standard_normal((d, h)) / np.sqrt(d)
    w2 = rng.standard_normal((h, k)) / np.sqrt(h)
    logits = np.tanh(x @ w1) @ w2
    return x, (logits - logits.mean(axis=0)).argmax(axis=1)


_BUILTINS: dict[str, Callable[[dict[str, Any]], tuple[np.ndarray, np.ndarray]]] = {
    "digits": _digits, "mnist1d": _mnist1d, "teacher": _teacher,
}


def read_upload(upload: StoredUpload) -> tuple[np.ndarray, np.ndarray]:
    """`x` and `y` from an uploaded .npz or .safetensors file; never unpickles."""
    try:
        with upload.open() as f:
            if upload.kind == "npz":
                with np.load(f, allow_pickle=False) as archive:
                    arrays = {k: archive[k] for k in archive.files if k in ("x", "y")}
            else:
                arrays = numpy_arrays(f, upload.size(), ("x", "y"))
    except Exception as exc:  # numpy / safetensors raise several types for a damaged file
        if "allow_pickle" in str(exc):
            raise ValueError("uploaded data holds pickled objects, which are refused") from None
        raise ValueError(f"cannot read uploaded data {upload.id}: {exc}") from None
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise ValueError(f"uploaded data needs arrays 'x' and 'y'; missing: {', '.join(missing)}")
    return arrays["x"], arrays["y"]


def _from_factory(name: str, kwargs: dict[str, Any]) -> tuple[Any, Any]:
    ep = next(e for e in entry_points(group=catalog.DATASET_GROUP) if e.name == name)
    out = ep.load()(**kwargs)
    if isinstance(out, dict) and "x" in out and "y" in out:
        return out["x"], out["y"]
    if isinstance(out, (tuple, list)) and len(out) == 2:
        return out[0], out[1]
    raise ValueError(f"dataset factory '{name}' must return (x, y) or {{'x': ..., 'y': ...}}")


def _check(x: np.ndarray, y: np.ndarray, task: str = "classification"
           ) -> tuple[np.ndarray, np.ndarray]:
    """The arrays as float32 inputs and int64 labels (float32 targets), once they pass the
    dataset rules (jobs.dataset_rules)."""
    dataset_rules.check_arrays(x, y, task)
    if task == "regression":
        return x.astype(np.float32), y.astype(np.float32)
    return x.astype(np.float32), y.astype(np.int64)


def split(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation indices: a seeded permutation, at least one example in each."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = min(max(1, round(n * val_fraction)), n - 1)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def load_dataset(dataset: str, kwargs: dict[str, Any], val_fraction: float, seed: int,
                 upload: StoredUpload | None = None, task: str = "classification") -> Dataset:
    """Build, split and standardise a dataset. `upload` is the file of dataset 'upload'."""
    catalog.check_dataset(dataset)
    kw = catalog.dataset_kwargs(dataset, kwargs)
    if dataset in _BUILTINS:
        x, y = _BUILTINS[dataset](kw)
    elif dataset == "upload":
        if upload is None:
            raise ValueError("dataset 'upload' needs the id of an uploaded file")
        x, y = read_upload(upload)
    else:
        raw_x, raw_y = _from_factory(dataset, kw)
        x, y = (t.detach().cpu().numpy() if isinstance(t, Tensor) else np.asarray(t)
                for t in (raw_x, raw_y))
    x, y = _check(np.asarray(x), np.asarray(y), task)
    train, val = split(len(y), val_fraction, seed)
    mean = x[train].mean(axis=0)
    std = x[train].std(axis=0)
    std[std < 1e-8] = 1.0  # constant features (digits' border pixels) stay at zero
    x = (x - mean) / std
    if task == "regression":  # targets standardised too; num_classes counts the outputs
        y = y.reshape(len(y), -1) if y.ndim > 2 else y
        y_std = y[train].std(axis=0)
        y = (y - y[train].mean(axis=0)) / np.where(y_std < 1e-8, 1.0, y_std)
        return Dataset(torch.from_numpy(x[train]), torch.from_numpy(y[train]),
                       torch.from_numpy(x[val]), torch.from_numpy(y[val]),
                       tuple(x.shape[1:]), 1 if y.ndim == 1 else y.shape[1])
    num_classes = int(y.max()) + 1
    if dataset != "upload" and dataset in catalog.DATASET_KWARGS:
        known = catalog.dataset_shape(dataset, kw)
        num_classes = known[1] if known else num_classes
    return Dataset(torch.from_numpy(x[train]), torch.from_numpy(y[train]),
                   torch.from_numpy(x[val]), torch.from_numpy(y[val]),
                   tuple(x.shape[1:]), max(num_classes, 2))
