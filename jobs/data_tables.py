"""Hugging Face datasets on shared storage (`"dataset": "hf"`): saved directories
(`datasets.save_to_disk`) and parquet / CSV / JSON files, checked by their headers only
(parquet schemas, CSV header lines, saved-dataset JSON), without torch or datasets."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from spartan_service.jobs.readable import Loc, PathError

TABLE_SUFFIXES = (".parquet", ".csv", ".json", ".jsonl")


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
