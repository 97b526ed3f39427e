"""Paths a job spec names (datasets on shared storage, Hugging Face model folders): each must lie
under SPARTAN_DATA_ROOTS, and where this process can see the storage, what it names must be
there and readable, with the columns, labels and files the job needs.

No torch: the API runs these checks at submit so that a bad path is a 422 naming the field; the
worker runs them again before loading (it may see other storage than the API). Only headers are
read (npy headers, parquet schemas, CSV header lines, saved-dataset JSON), except the labels of
an .npy dataset, which are scanned in chunks for their range.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from spartan_service.jobs import catalog, dataset_rules, model_dirs
from spartan_service.jobs.spec import JobSpec

Loc = list[str | int]
Problem = tuple[Loc, str]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
TABLE_SUFFIXES = (".parquet", ".csv", ".json", ".jsonl")


class PathError(ValueError):
    """A problem with one field of the spec; `loc` names it as the API's 422 does."""

    def __init__(self, loc: Loc, msg: str) -> None:
        super().__init__(f"{'.'.join(map(str, loc))}: {msg}")
        self.loc, self.msg = loc, msg


def resolve_under(value: str, roots: list[Path]) -> Path:
    """`value` resolved (symlinks followed; relative paths against the first root); PathError
    loc-less ValueError unless it lies under one of `roots`."""
    if not roots:
        raise ValueError("no data roots are configured (SPARTAN_DATA_ROOTS), so no path can be "
                         "read; use a built-in dataset or an upload, or ask the operator to "
                         "set SPARTAN_DATA_ROOTS")
    try:
        raw = Path(value).expanduser()
        path = (raw if raw.is_absolute() else roots[0] / raw).resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # ~nobody, a name too long, NUL
        raise ValueError(f"'{value[:200]}' is not a usable path ({exc})") from None
    if not any(path == root or path.is_relative_to(root) for root in roots):
        raise ValueError(f"'{value}' is outside the data roots "
                         f"({':'.join(str(r) for r in roots)})")
    return path


def hf_model_dir(arch: str) -> str | None:
    """The folder of 'hf:/abs/path' (a path, checked against the roots); None for a name,
    which the worker resolves from its local Hugging Face cache."""
    if not catalog.is_hf(arch):
        return None
    name = arch[3:]
    return name if name.startswith(("/", "~", ".")) else None


def resolved_paths(spec: JobSpec, roots: list[Path]) -> dict[str, Path]:
    """Every path of the spec by field (`model.arch`, `data.kwargs.root`, ...), resolved
    under the roots; PathError names the first field that is not."""
    out: dict[str, Path] = {}
    model_dir = hf_model_dir(spec.model.arch)
    if model_dir is not None:
        try:
            out["model.arch"] = resolve_under(model_dir, roots)
        except ValueError as exc:
            raise PathError(["model", "arch"], str(exc)) from None
    kw = catalog.dataset_kwargs(spec.data.dataset, spec.data.kwargs)
    for key in catalog.PATH_KWARGS.get(spec.data.dataset, ()):
        if kw.get(key) is None:
            continue
        try:
            out[f"data.kwargs.{key}"] = resolve_under(kw[key], roots)
        except ValueError as exc:
            raise PathError(["data", "kwargs", key], str(exc)) from None
    return out


def check_spec(spec: JobSpec, roots: list[Path], look: bool = True) -> None:
    """PathError for the first problem: a path outside the roots, and with `look`, anything
    missing or unreadable that the job needs."""
    paths = resolved_paths(spec, roots)
    if not look:
        return
    try:
        _look(spec, paths)
    except OSError as exc:  # a name too long for the file system, an I/O error
        loc: Loc = list(next(iter(paths), "data.kwargs").split("."))
        raise PathError(loc, f"cannot read it: {exc}") from None


def _look(spec: JobSpec, paths: dict[str, Path]) -> None:
    kw = catalog.dataset_kwargs(spec.data.dataset, spec.data.kwargs)
    task = spec.training.task
    if spec.data.dataset == "imagefolder":
        classes = image_classes(paths["data.kwargs.root"], ["data", "kwargs", "root"])
        if "data.kwargs.val_root" in paths:
            val = image_classes(paths["data.kwargs.val_root"], ["data", "kwargs", "val_root"])
            if val != classes:
                raise PathError(["data", "kwargs", "val_root"],
                                f"its classes {val} differ from root's {classes}")
    elif spec.data.dataset == "hf":
        check_table(paths, kw, task)
    elif spec.data.dataset == "npy":
        check_arrays(paths, kw, task)
    elif spec.data.dataset == "fashion-mnist":
        fashion_mnist_dir(paths.get("data.kwargs.root"))
    if "model.arch" in paths:
        try:
            model_dirs.check_model_dir(paths["model.arch"],
                                       spec.model.kwargs.get("pretrained", True),
                                       catalog.text_data(spec.data.dataset), task)
        except model_dirs.ModelDirError as exc:
            raise PathError(exc.loc, exc.msg) from None


def _readable_dir(path: Path, loc: Loc) -> None:
    if not path.is_dir():
        raise PathError(loc, f"{path} is not a directory" if path.exists()
                        else f"{path} does not exist")
    if not os.access(path, os.R_OK | os.X_OK):
        raise PathError(loc, f"{path} is not readable")


def _readable(path: Path, loc: Loc) -> None:
    """A readable file, or a readable folder (of shards)."""
    if path.is_dir():
        _readable_dir(path, loc)
    else:
        _readable_file(path, loc)


def _readable_file(path: Path, loc: Loc) -> None:
    if not path.is_file():
        raise PathError(loc, f"{path} is not a file" if path.exists()
                        else f"{path} does not exist")
    if not os.access(path, os.R_OK):
        raise PathError(loc, f"{path} is not readable")


def image_classes(root: Path, loc: Loc) -> list[str]:
    """Sorted class folder names of an image folder; each must hold at least one image."""
    _readable_dir(root, loc)
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
    if len(classes) < 2:
        raise PathError(loc, f"{root} needs at least 2 class subfolders of PNG or JPEG images, "
                        f"found {len(classes)}")
    for name in classes:
        folder = root / name
        if not os.access(folder, os.R_OK | os.X_OK):
            raise PathError(loc, f"class folder {folder} is not readable")
        if not any(e.name.lower().endswith(IMAGE_SUFFIXES) for e in os.scandir(folder)):
            raise PathError(loc, f"class folder {folder} holds no .png, .jpg or .jpeg file")
    return classes


def fashion_mnist_dir(root: Path | None) -> Path:
    """The folder holding the four Fashion-MNIST idx files."""
    folder = root or Path(catalog.FASHION_MNIST_DIR)
    missing = [f for f in catalog.FASHION_MNIST_FILES if not (folder / f).is_file()]
    if missing:
        if root is None:
            raise PathError(["data", "dataset"], "fashion-mnist needs Debian's "
                            "dataset-fashion-mnist package on the worker (apt-get install "
                            f"dataset-fashion-mnist), which puts it in {folder}; or give "
                            "kwargs.root, a folder with the same files")
        raise PathError(["data", "kwargs", "root"], f"{folder} lacks {', '.join(missing)}")
    return folder


# --- Hugging Face datasets (saved directories and table files) --------------------------------

def table_files(path: Path) -> list[Path]:
    """The parquet / CSV / JSON files a path names: the file, or the files of one format in a
    folder (sorted)."""
    if path.is_file():
        return [path] if path.suffix.lower() in TABLE_SUFFIXES else []
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in TABLE_SUFFIXES and p.is_file())
    kinds = {table_format(p) for p in files}
    if len(kinds) > 1:
        raise ValueError(f"{path} mixes file formats ({', '.join(sorted(kinds))}); keep one")
    return files


def table_format(path: Path) -> str:
    suffix = path.suffix.lower().lstrip(".")
    return "json" if suffix == "jsonl" else suffix


def saved_kind(path: Path) -> str | None:
    """'dict' for a saved DatasetDict, 'dataset' for a saved Dataset, None otherwise."""
    if (path / "dataset_dict.json").is_file():
        return "dict"
    if (path / "state.json").is_file() and (path / "dataset_info.json").is_file():
        return "dataset"
    return None


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None


def table_columns(path: Path, split: str | None) -> list[str] | None:
    """Column names of a saved dataset (the given split of a DatasetDict) or of the first
    table file; None when they cannot be told without loading (JSON arrays)."""
    kind = saved_kind(path) if path.is_dir() else None
    if kind == "dict":
        splits = _json(path / "dataset_dict.json").get("splits", [])
        name = split or "train"
        if name not in splits:
            raise ValueError(f"split '{name}' is not in {path} (splits: {', '.join(splits)})")
        return list(_json(path / name / "dataset_info.json").get("features", {}))
    if kind == "dataset":
        if split is not None:
            raise ValueError(f"{path} is one saved Dataset, not a DatasetDict: it has no "
                             f"split '{split}'")
        return list(_json(path / "dataset_info.json").get("features", {}))
    files = table_files(path)
    if not files:
        raise ValueError(f"{path} is neither a saved dataset (datasets.save_to_disk) nor "
                         "parquet / CSV / JSON files")
    first, fmt = files[0], table_format(files[0])
    try:
        if fmt == "parquet":
            try:
                import pyarrow.parquet as pq
            except ImportError:  # the [hf] extra is not installed here: the worker will tell
                return None
            return list(pq.read_schema(first).names)
        with first.open(newline="", encoding="utf-8") as f:
            if fmt == "csv":
                return next(csv.reader(f), [])
            line = f.readline()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {first}: {exc}") from None
    except Exception as exc:  # pyarrow's errors for a file that is not parquet
        raise ValueError(f"cannot read {first} as parquet: {exc}") from None
    try:
        record = json.loads(line)
    except ValueError:
        return None  # a JSON document, not JSON lines: datasets will tell
    return list(record) if isinstance(record, dict) else None


def check_table(paths: dict[str, Path], kw: dict[str, Any], task: str) -> None:
    needed = [("text_column", kw["text_column"])]
    if task != "causal_lm":
        needed.append(("label_column", kw["label_column"]))
    sources = [("path", paths["data.kwargs.path"], kw["split"])]
    if "data.kwargs.val_path" in paths:
        sources.append(("val_path", paths["data.kwargs.val_path"], None))
    elif kw["val_split"] is not None:
        sources.append(("val_split", paths["data.kwargs.path"], kw["val_split"]))
    for key, path, split in sources:
        loc: Loc = ["data", "kwargs", key]
        if not path.exists():
            raise PathError(loc, f"{path} does not exist")
        if not os.access(path, os.R_OK):
            raise PathError(loc, f"{path} is not readable")
        try:
            columns = table_columns(path, split)
        except ValueError as exc:
            raise PathError(loc if key != "path" or split is None
                            else ["data", "kwargs", "split"], str(exc)) from None
        if columns is None:
            continue
        for field, column in needed:
            if column not in columns:
                raise PathError(["data", "kwargs", field],
                                f"column '{column}' is not in {path} (columns: "
                                f"{', '.join(columns)})")


# --- .npy arrays -----------------------------------------------------------------------------

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
        x_path = paths[f"data.kwargs.{xk}"]
        _readable(x_path, ["data", "kwargs", xk])
        try:
            x_shape, x_dtype = array_header(x_path)
        except ValueError as exc:
            raise PathError(["data", "kwargs", xk], str(exc)) from None
        if task == "causal_lm":
            if x_dtype.kind not in "iu" or len(x_shape) != 2:
                raise PathError(["data", "kwargs", xk], f"causal_lm needs token ids: an integer "
                                f"array (N, L), got {x_dtype} {list(x_shape)}")
        elif len(x_shape) < 2:
            raise PathError(["data", "kwargs", xk], f"x must be (N, features...), got shape "
                            f"{list(x_shape)}")
        if f"data.kwargs.{yk}" not in paths:
            if task != "causal_lm":
                raise PathError(["data", "kwargs", yk], f"task '{task}' needs labels or "
                                "targets: kwargs.y")
            continue
        y_path = paths[f"data.kwargs.{yk}"]
        _readable(y_path, ["data", "kwargs", yk])
        try:
            y_shape, _ = array_header(y_path)
        except ValueError as exc:
            raise PathError(["data", "kwargs", yk], str(exc)) from None
        if not y_shape or y_shape[0] != x_shape[0]:
            raise PathError(["data", "kwargs", yk], f"y has shape {list(y_shape)}, x has "
                            f"{x_shape[0]} examples")
        if task == "classification":
            check_labels(y_path, y_shape, kw["num_classes"], ["data", "kwargs", yk])


def check_labels(path: Path, shape: tuple[int, ...], num_classes: int | None, loc: Loc) -> None:
    if len(shape) != 1:
        raise PathError(loc, f"class labels must be one per example (shape (N,)), got "
                        f"{list(shape)}")
    try:
        dataset_rules.check_values(label_findings(path), "classification", num_classes,
                                   path.name)
    except dataset_rules.DatasetError as exc:
        raise PathError(loc, str(exc)) from None
