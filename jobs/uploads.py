"""Checks of uploaded tensor files, without torch, without ever unpickling, in bounded memory:
each format in its own module (jobs.safetensors_file, jobs.npz_file) under the shared bounds of
jobs.upload_limits. A file holding both `x` and `y` is a dataset: refused here if a job could
not train on it (the rules of jobs.dataset_rules, for classification), its values checked
chunk by chunk.
"""

from __future__ import annotations

import io
from typing import IO, Any

from spartan_service.jobs import dataset_rules
from spartan_service.jobs.dataset_rules import Findings
from spartan_service.jobs.npz_file import inspect_npz_file
from spartan_service.jobs.safetensors_file import inspect_safetensors_file
from spartan_service.jobs.upload_limits import Limits, UploadError

__all__ = ["Limits", "UploadError", "check_dataset", "inspect", "inspect_file", "kind_of",
           "summary"]


def kind_of(filename: str) -> str:
    lower = filename.lower()
    if lower.endswith(".safetensors"):
        return "safetensors"
    if lower.endswith(".npz"):
        return "npz"
    raise UploadError(f"file '{filename}': only .safetensors and .npz files are accepted")


def check_dataset(xs: list[int], ys: list[int], values: Findings | None = None) -> None:
    """The dataset rules (jobs.dataset_rules) for a classification job, as an UploadError."""
    try:
        dataset_rules.check_shapes(xs, ys)
        if values is not None:
            dataset_rules.check_values(values)
    except dataset_rules.DatasetError as exc:
        raise UploadError(f"data: {exc}") from None


def inspect_file(
    filename: str, f: IO[bytes], size: int, limits: Limits = Limits()
) -> tuple[str, dict[str, Any]]:
    """(kind, {name: {"dtype", "shape"}}) of an uploaded file open for binary reading."""
    kind = kind_of(filename)
    if kind == "safetensors":
        tensors, values = inspect_safetensors_file(f, size, limits)
    else:
        tensors, values = inspect_npz_file(f, size, limits)
    if not tensors:
        raise UploadError("file holds no tensors")
    if "x" in tensors and "y" in tensors:
        check_dataset(tensors["x"]["shape"], tensors["y"]["shape"], values)
    return kind, tensors


def inspect(filename: str, data: bytes, limits: Limits = Limits()) -> tuple[str, dict[str, Any]]:
    """inspect_file over bytes in memory (tests, small files)."""
    return inspect_file(filename, io.BytesIO(data), len(data), limits)


def summary(tensors: dict[str, Any], keep: int = 8) -> dict[str, Any]:
    """A bounded view of an upload's tensors for listings: the first few, and how many."""
    names = list(tensors)[:keep]
    return {name: tensors[name] for name in names}
