"""Datasets read from shared storage and streamed: `imagefolder`, `hf`, `npy`, `fashion-mnist`.

`open_storage` resolves the spec's paths under the data roots, reads what it must to know the
data's shape (headers, class folders, label ranges, statistics in one bounded pass), and returns
sources that fetch batches on demand; `StreamData.batches` wraps them in DataLoaders. The
validation split is a named one when the spec gives it (val_root, val_x / val_y, val_path or
val_split, Fashion-MNIST's test set), else a seeded permutation of the training examples.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spartan_service.jobs import catalog, data_arrays, datapaths, dataset_rules
from spartan_service.worker.arrays import NpySource, fashion_mnist, feature_stats
from spartan_service.worker.data import split
from spartan_service.worker.images import ImageSource, list_images
from spartan_service.worker.loaders import LoaderBatches, NpyArray, NpyShards, Source, open_array
from spartan_service.worker.text import TextSource, label_classes, open_table, target_stats

Shape = tuple[int, ...]
Array = NpyArray | NpyShards


@dataclass
class StreamData:
    train: Source
    train_index: np.ndarray
    val: Source
    val_index: np.ndarray
    input_shape: Shape | None  # one example's shape; None for text
    outputs: int  # classes, regression targets, or 0 for causal_lm (the vocabulary decides)
    text: bool

    @property
    def num_classes(self) -> int:
        return self.outputs

    def resident_bytes(self) -> int:
        """Bytes the sources hold in memory (Fashion-MNIST's images; files are streamed)."""
        held = {id(s): s for s in (self.train, self.val)}.values()
        return sum(int(getattr(s, "images", np.empty(0)).nbytes) for s in held)

    def batches(self, batch_size: int, seed: int, device: torch.device, workers: int = 0,
                rank: int = 0, world_size: int = 1) -> LoaderBatches:
        return LoaderBatches(self.train, self.train_index, self.val, self.val_index,
                             batch_size, seed, device, workers, rank, world_size)


class _Paths:
    def __init__(self, kw: dict[str, Any], roots: list[Path]) -> None:
        self.kw, self.roots = kw, roots

    def __call__(self, key: str) -> Path:
        try:
            return datapaths.resolve_under(self.kw[key], self.roots)
        except ValueError as exc:
            raise ValueError(f"data.kwargs.{key}: {exc}") from None


def open_storage(dataset: str, kwargs: dict[str, Any], task: str, val_fraction: float,
                 seed: int, roots: list[Path], tokenizer: Any = None,
                 cache_dir: Path | None = None) -> StreamData:
    kw = catalog.dataset_kwargs(dataset, kwargs)
    path = _Paths(kw, roots)
    if dataset == "npy":
        return _npy(kw, path, task, val_fraction, seed)
    if dataset == "imagefolder":
        return _imagefolder(kw, path, val_fraction, seed)
    if dataset == "fashion-mnist":
        folder = datapaths.fashion_mnist_dir(path("root") if kw["root"] else None)
        train, val = fashion_mnist(folder, kw["limit"], kw["val_limit"])
        return StreamData(train, np.arange(len(train)), val, np.arange(len(val)), (1, 28, 28),
                          10, False)
    if dataset == "hf":
        if tokenizer is None:
            raise ValueError("dataset 'hf' needs the model's tokenizer")
        return _hf(kw, path, task, val_fraction, seed, tokenizer, cache_dir)
    raise ValueError(f"'{dataset}' is not a storage dataset")


def _npy(kw: dict[str, Any], path: _Paths, task: str, val_fraction: float, seed: int
         ) -> StreamData:
    x = open_array(path("x"))
    y = open_array(path("y")) if kw["y"] else None
    _check_shapes(x, y, task, "x", "y")
    if kw["val_x"]:
        vx = open_array(path("val_x"))
        vy = open_array(path("val_y")) if kw["val_y"] else None
        if vx.shape[1:] != x.shape[1:]:
            raise ValueError(f"data.kwargs.val_x: examples of shape {list(vx.shape[1:])}, x's "
                             f"are {list(x.shape[1:])}")
        _check_shapes(vx, vy, task, "val_x", "val_y", min_examples=1)
        train_index, val_index = np.arange(len(x)), np.arange(len(vx))
    else:
        vx, vy = x, y
        train_index, val_index = split(len(x), val_fraction, seed)
    outputs, x_stats, y_stats = 0, None, None
    if task == "classification":
        assert y is not None
        outputs = _classes([y, vy], kw["num_classes"])
    elif task == "regression":
        assert y is not None
        outputs = 1 if len(y.shape) == 1 else int(np.prod(y.shape[1:]))
        y_stats = feature_stats(y, train_index)
    if task != "causal_lm" and kw["standardize"]:
        x_stats = feature_stats(x, train_index)

    def make(a: Array, b: Array | None) -> NpySource:
        return NpySource(a, b, task, outputs or None, x_stats, y_stats)

    return StreamData(make(x, y), train_index, make(vx, vy), val_index, tuple(x.shape[1:]),
                      outputs, False)


def _check_shapes(x: Array, y: Array | None, task: str, xk: str, yk: str,
                  min_examples: int = 2) -> None:
    try:
        dataset_rules.check_shapes(x.shape, None if y is None else y.shape, task, min_examples)
    except dataset_rules.DatasetError as exc:
        raise ValueError(f"data.kwargs.{xk if exc.field == 'x' else yk}: {exc}") from None


def _classes(arrays: list[Array | None], given: int | None) -> int:
    """The number of classes (given, or the largest label + 1), every label checked against
    the dataset rules in one chunked pass."""
    hi = dataset_rules.Findings()
    for arr in arrays:
        if arr is None:
            continue
        findings = data_arrays.label_findings(arr.path)
        try:
            dataset_rules.check_values(findings, "classification", given, arr.path.name)
        except dataset_rules.DatasetError as exc:
            raise ValueError(f"data.kwargs: {exc}") from None
        hi.y_max = max(hi.y_max, findings.y_max)
    return dataset_rules.count_classes(hi, given)


def _imagefolder(kw: dict[str, Any], path: _Paths, val_fraction: float, seed: int
                 ) -> StreamData:
    root = path("root")
    classes = datapaths.image_classes(root, ["data", "kwargs", "root"])
    files, labels = list_images(root, classes)
    args = (kw["size"], kw["channels"], kw["crop_padding"], kw["flip"])
    train = ImageSource(files, labels, *args)
    if kw["val_root"]:
        vfiles, vlabels = list_images(path("val_root"), classes)
        val = ImageSource(vfiles, vlabels, *args)
        train_index, val_index = np.arange(len(files)), np.arange(len(vfiles))
    else:
        val = ImageSource(files, labels, *args)
        train_index, val_index = split(len(files), val_fraction, seed)
    mean, std = train.channel_stats(train_index, seed)
    for source in (train, val):
        source.mean, source.std = torch.from_numpy(mean), torch.from_numpy(std)
    return StreamData(train, train_index, val, val_index,
                      (kw["channels"], kw["size"], kw["size"]), len(classes), False)


def _hf(kw: dict[str, Any], path: _Paths, task: str, val_fraction: float, seed: int,
        tokenizer: Any, cache_dir: Path | None) -> StreamData:
    table = open_table(path("path"), kw["split"], cache_dir, "path")
    if kw["val_path"]:
        val_table = open_table(path("val_path"), None, cache_dir, "val_path")
    elif kw["val_split"]:
        val_table = open_table(path("path"), kw["val_split"], cache_dir, "val_split")
    else:
        val_table = None
    if len(table) < (1 if val_table is not None else 2):
        raise ValueError(f"data.kwargs.path: the dataset has {len(table)} rows")
    label = None if task == "causal_lm" else kw["label_column"]
    outputs, label_map, stats = 0, None, None
    if task == "classification":
        outputs, label_map = label_classes([t for t in (table, val_table) if t is not None],
                                           kw["label_column"])
    elif task == "regression":
        outputs, stats = 1, target_stats(table, kw["label_column"])

    def make(t: Any) -> TextSource:
        return TextSource(t, kw["text_column"], label, tokenizer, kw["max_length"], task,
                          label_map, outputs or None, stats)

    train = make(table)
    if val_table is None:
        train_index, val_index = split(len(table), val_fraction, seed)
        return StreamData(train, train_index, train, val_index, None, outputs, True)
    return StreamData(train, np.arange(len(table)), make(val_table), np.arange(len(val_table)),
                      None, outputs, True)
