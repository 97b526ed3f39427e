"""Paths a job spec names (datasets on shared storage, Hugging Face model folders): each must lie
under SPARTAN_DATA_ROOTS, and where this process can see the storage, what it names must be
there and readable, with the columns, labels and files the job needs (image folders and
Fashion-MNIST here; Hugging Face tables in jobs.data_tables, .npy arrays in jobs.data_arrays).

No torch: the API runs these checks at submit so that a bad path is a 422 naming the field; the
worker runs them again before loading (it may see other storage than the API). Only headers are
read (npy headers, parquet schemas, CSV header lines, saved-dataset JSON), except the labels of
an .npy dataset, which are scanned in chunks for their range.
"""

from __future__ import annotations

import os
from pathlib import Path

from spartan_service.jobs import catalog, data_arrays, data_tables, model_dirs
from spartan_service.jobs.readable import Loc, PathError, readable_dir
from spartan_service.jobs.spec import JobSpec

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


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
        data_tables.check_table(paths, kw, task)
    elif spec.data.dataset == "npy":
        data_arrays.check_arrays(paths, kw, task)
    elif spec.data.dataset == "fashion-mnist":
        fashion_mnist_dir(paths.get("data.kwargs.root"))
    if "model.arch" in paths:
        try:
            model_dirs.check_model_dir(paths["model.arch"],
                                       spec.model.kwargs.get("pretrained", True),
                                       catalog.text_data(spec.data.dataset), task)
        except model_dirs.ModelDirError as exc:
            raise PathError(exc.loc, exc.msg) from None


def image_classes(root: Path, loc: Loc) -> list[str]:
    """Sorted class folder names of an image folder; each must hold at least one image."""
    readable_dir(root, loc)
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
