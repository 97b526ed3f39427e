"""Text datasets through Hugging Face `datasets`: a `save_to_disk` folder (a Dataset, or a
DatasetDict and its named splits), or parquet / CSV / JSON files. Arrow tables are memory-mapped,
so nothing is loaded whole; each batch's rows are read by index and tokenised on the spot with
the model's tokenizer (truncated to max_length, padded to the batch's longest).

Labels: a ClassLabel column gives the classes; integers are checked to be >= 0; strings are
mapped to their sorted order. causal_lm needs no label column: the targets are the input ids,
padding masked out (-100), and the loss shifts them by one token.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spartan_service.jobs import data_tables, dataset_rules
from spartan_service.worker.loaders import Batch

IGNORE = -100  # target of padding tokens (cross_entropy's ignore_index)


def _datasets() -> Any:
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # nothing is fetched on a worker
    try:
        import datasets
    except ImportError:
        raise ValueError("dataset 'hf' needs the datasets package on the worker "
                         "(pip install 'spartan-service[hf]')") from None
    datasets.disable_progress_bars()
    return datasets


def open_table(path: Path, split: str | None, cache_dir: Path | None, field: str) -> Any:
    """A datasets.Dataset from a saved folder (its `split`) or table files."""
    datasets = _datasets()
    kind = data_tables.saved_kind(path) if path.is_dir() else None
    try:
        if kind == "dict":
            table = datasets.load_from_disk(str(path))
            name = split or "train"
            if name not in table:
                raise ValueError(f"data.kwargs.{field}: split '{name}' is not in {path} "
                                 f"(splits: {', '.join(table)})")
            return table[name]
        if kind == "dataset":
            return datasets.load_from_disk(str(path))
        files = data_tables.table_files(path)
        if not files:
            raise ValueError(f"data.kwargs.{field}: {path} is neither a saved dataset nor "
                             "parquet / CSV / JSON files")
        return datasets.load_dataset(data_tables.table_format(files[0]),
                                     data_files=[str(f) for f in files], split="train",
                                     cache_dir=str(cache_dir) if cache_dir else None)
    except ValueError:
        raise
    except Exception as exc:  # datasets and pyarrow raise many types for a damaged file
        raise ValueError(f"data.kwargs.{field}: cannot read {path}: "
                         f"{type(exc).__name__}: {exc}") from None


def column(table: Any, name: str, field: str) -> Any:
    if name not in table.column_names:
        raise ValueError(f"data.kwargs.{field}: column '{name}' is not in the dataset "
                         f"(columns: {', '.join(table.column_names)})")
    return table.data.column(name)


def label_classes(tables: list[Any], name: str) -> tuple[int, dict[str, int] | None]:
    """(number of classes, mapping of string labels or None) over the given tables."""
    import pyarrow as pa
    import pyarrow.compute as pc

    feature = tables[0].features.get(name)
    if type(feature).__name__ == "ClassLabel":
        return int(feature.num_classes), None
    chunks = [column(t, name, "label_column") for t in tables]
    kind = chunks[0].type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        values = sorted({v for c in chunks for v in pc.unique(c).to_pylist() if v is not None})
        return max(len(values), 2), {v: i for i, v in enumerate(values)}
    if not pa.types.is_integer(kind):
        raise ValueError(f"data.kwargs.label_column: column '{name}' holds {kind}; class labels "
                         "must be integers or strings")
    lo = min(pc.min_max(c)["min"].as_py() for c in chunks)
    hi = max(pc.min_max(c)["max"].as_py() for c in chunks)
    if lo is None:
        raise ValueError(f"data.kwargs.label_column: column '{name}' holds no labels")
    findings = dataset_rules.Findings(y_min=lo, y_max=hi)
    try:
        dataset_rules.check_values(findings, "classification", y_name=f"column '{name}'")
    except dataset_rules.DatasetError as exc:
        raise ValueError(f"data.kwargs.label_column: {exc}") from None
    return dataset_rules.count_classes(findings), None


class TextSource:
    augments = False

    def __init__(self, table: Any, text_column: str, label_column: str | None, tokenizer: Any,
                 max_length: int, task: str, label_map: dict[str, int] | None = None,
                 num_classes: int | None = None,
                 target_stats: tuple[float, float] | None = None) -> None:
        column(table, text_column, "text_column")
        keep = [text_column] + ([label_column] if label_column else [])
        if label_column:
            column(table, label_column, "label_column")
        self.table = table.select_columns(keep)
        self.text_column, self.label_column = text_column, label_column
        self.tokenizer, self.max_length, self.task = tokenizer, max_length, task
        self.label_map, self.num_classes = label_map, num_classes
        self.target_stats = target_stats

    def __len__(self) -> int:
        return len(self.table)

    def fetch(self, index: np.ndarray, rng: np.random.Generator | None) -> Batch:
        rows = self.table[index.tolist()]
        texts = rows[self.text_column]
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise ValueError(f"data.kwargs.text_column: row {int(index[bad])} of column "
                             f"'{self.text_column}' is {type(texts[bad]).__name__}, not text")
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_length,
                             padding="longest", return_tensors="pt")
        inputs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        if self.task == "causal_lm":
            return inputs, enc["input_ids"].masked_fill(enc["attention_mask"] == 0, IGNORE)
        assert self.label_column is not None
        values = rows[self.label_column]
        if self.task == "regression":
            y = torch.tensor(values, dtype=torch.float32)
            if self.target_stats is not None:
                y = (y - self.target_stats[0]) / self.target_stats[1]
            return inputs, y
        if self.label_map is not None:
            values = [self.label_map.get(v, -1) for v in values]
        y = torch.tensor(values, dtype=torch.int64)
        limit = self.num_classes or 0
        bad_rows = ((y < 0) | (y >= limit)).nonzero()
        if len(bad_rows):
            i = int(bad_rows[0])
            raise ValueError(f"data.kwargs.label_column: row {int(index[i])} has label "
                             f"{values[i]!r}, not a class in 0..{limit - 1}")
        return inputs, y


def target_stats(table: Any, name: str) -> tuple[float, float]:
    """Mean and standard deviation of a numeric regression target column."""
    import pyarrow.compute as pc

    values = column(table, name, "label_column")
    mean = pc.mean(values).as_py()
    std = pc.stddev(values).as_py()
    if mean is None or std is None:
        raise ValueError(f"data.kwargs.label_column: column '{name}' holds no numbers")
    return float(mean), float(std) if std > 1e-8 else 1.0
