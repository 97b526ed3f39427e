"""Names of the built-in models and datasets, known without importing torch.

The worker builds them (worker/models.py, worker/data.py); the API validates names here so that a
typo is refused at submit time with the list of valid names.
"""

from __future__ import annotations

import importlib.util
from importlib.metadata import entry_points
from typing import Any

BUILTIN_MODELS = ("mlp", "cnn", "resnet", "vit")
BUILTIN_DATASETS = ("digits", "mnist1d", "teacher", "upload")
MODEL_GROUP = "spartan.models"
DATASET_GROUP = "spartan.datasets"


def _plugins(group: str) -> list[str]:
    return sorted(ep.name for ep in entry_points(group=group))


def model_names() -> list[str]:
    return [*BUILTIN_MODELS, *_plugins(MODEL_GROUP)]


def dataset_names() -> list[str]:
    return [*BUILTIN_DATASETS, *_plugins(DATASET_GROUP)]


def check_model(arch: str) -> None:
    """Raise ValueError naming the valid choices when arch is unknown."""
    prefix, sep, name = arch.partition(":")
    if sep:
        if prefix not in ("torchvision", "timm") or not name:
            raise ValueError(f"unknown model source '{prefix}'; use 'torchvision:NAME' or 'timm:NAME'")
        if importlib.util.find_spec(prefix) is None:
            raise ValueError(f"'{arch}' needs the '{prefix}' package, which is not installed")
        return
    if arch not in model_names():
        raise ValueError(f"unknown arch '{arch}'; valid: {', '.join(model_names())}")


def check_dataset(name: str) -> None:
    if name not in dataset_names():
        raise ValueError(f"unknown dataset '{name}'; valid: {', '.join(dataset_names())}")


def block_problems(
    arch: str,
    kwargs: dict[str, Any],
    dataset: str,
    block: tuple[int, int],
    prefixes: list[str] | None,
) -> list[str]:
    """Messages for maskable layers of a built-in model whose shape `block` does not divide."""
    return []
