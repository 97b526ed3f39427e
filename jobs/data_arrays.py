""".npy datasets on shared storage (`"dataset": "npy"`): files or folders of shards, checked by
their headers (never unpickled), and their labels scanned in chunks against the dataset rules
(jobs.dataset_rules)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from spartan_service.jobs import dataset_rules
from spartan_service.jobs.readable import Loc, PathError, readable


def npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype[Any], bool, int]:
    """(shape, dtype, fortran_order, data offset) from an .npy header; never unpickles."""
    try:
        with path.open("rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            offset = f.tell()
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} is not a readable .npy file: {exc}") from None
    if dtype.hasobject or dtype.kind not in "biuf":
        raise ValueError(f"{path} holds {dtype} values; numbers are needed (objects are never "
                         "unpickled)")
    size = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if path.stat().st_size < size:
        raise ValueError(f"{path} is truncated: {path.stat().st_size} bytes, its header "
                         f"promises {size}")
    return tuple(int(s) for s in shape), dtype, bool(fortran), offset


def npy_files(path: Path) -> list[Path]:
    """An .npy file, or the sorted .npy shards of a folder (concatenated along the first
    axis)."""
    if not path.is_dir():
        return [path]
    shards = sorted(p for p in path.iterdir() if p.suffix == ".npy" and p.is_file())
    if not shards:
        raise ValueError(f"{path} holds no .npy shard")
    return shards


def array_header(path: Path) -> tuple[tuple[int, ...], np.dtype[Any]]:
    """(shape, dtype) of an .npy file or of a folder of shards (their rows added up)."""
    rows, rest, dtype = 0, None, None
    for shard in npy_files(path):
        shape, shard_dtype, _, _ = npy_header(shard)
        if not shape:
            raise ValueError(f"{shard} holds a scalar, not an array of examples")
        if rest is None:
            rest, dtype = shape[1:], shard_dtype
        elif shape[1:] != rest or shard_dtype != dtype:
            raise ValueError(f"shard {shard.name} is {shard_dtype} {list(shape)}; the first "
                             f"shard is {dtype} {[rows, *rest]}")
        rows += shape[0]
    assert rest is not None and dtype is not None
    return (rows, *rest), dtype


def _chunks(array: np.ndarray, rows: int = 1 << 20) -> Iterator[np.ndarray]:
    for i in range(0, len(array), rows):
        yield np.asarray(array[i:i + rows])


def label_findings(path: Path) -> dataset_rules.Findings:
    """What the dataset rules need of a label array (jobs.dataset_rules), read in chunks."""
    findings = dataset_rules.Findings()
    for shard in npy_files(path):
        for chunk in _chunks(np.load(shard, mmap_mode="r", allow_pickle=False)):
            findings.feed("y", chunk)
    return findings


def check_arrays(paths: dict[str, Path], kw: dict[str, Any], task: str) -> None:
    pairs = [("x", "y")] + ([("val_x", "val_y")] if "data.kwargs.val_x" in paths else [])
    for xk, yk in pairs:
        loc: dict[str, Loc] = {"x": ["data", "kwargs", xk], "y": ["data", "kwargs", yk]}
        x_path = paths[f"data.kwargs.{xk}"]
        readable(x_path, loc["x"])
        try:
            x_shape, x_dtype = array_header(x_path)
        except ValueError as exc:
            raise PathError(loc["x"], str(exc)) from None
        if task == "causal_lm" and x_dtype.kind not in "iu":
            raise PathError(loc["x"], f"causal_lm needs token ids: an integer array (N, L), "
                            f"got {x_dtype} {list(x_shape)}")
        y_path = paths.get(f"data.kwargs.{yk}")
        y_shape = None
        if y_path is not None:
            readable(y_path, loc["y"])
            try:
                y_shape, _ = array_header(y_path)
            except ValueError as exc:
                raise PathError(loc["y"], str(exc)) from None
        try:
            dataset_rules.check_shapes(x_shape, y_shape, task, 2 if xk == "x" else 1)
        except dataset_rules.DatasetError as exc:
            raise PathError(loc[exc.field], str(exc)) from None
        if task == "classification" and y_path is not None:
            check_labels(y_path, kw["num_classes"], loc["y"])


def check_labels(path: Path, num_classes: int | None, loc: Loc) -> None:
    try:
        dataset_rules.check_values(label_findings(path), "classification", num_classes,
                                   path.name)
    except dataset_rules.DatasetError as exc:
        raise PathError(loc, str(exc)) from None
