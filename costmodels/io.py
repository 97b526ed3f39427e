"""Read and write profile and cost-model files: validate fully first, then write atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from spartan_service.costmodels.schema import (
    CostModel,
    Profile,
    ProfileError,
    validate_cost_model,
    validate_profile,
)
from spartan_service.jobs.artifacts import write_atomic


def _read_json(path: str | Path) -> Any:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProfileError(f"not valid JSON ({exc.msg} at line {exc.lineno})") from None


def load_profile(path: str | Path) -> Profile:
    """A validated profile (latencies in ms). Raises ProfileError / ValueError."""
    return validate_profile(_read_json(path))


def load_cost_model(path: str | Path) -> CostModel:
    """A validated cost model (time units in ms). Raises ProfileError / ValueError."""
    return validate_cost_model(_read_json(path))


def _validate_any(data: Any) -> None:
    """Profiles have a list of layers, cost models a mapping of them."""
    layers = data.get("layers") if isinstance(data, dict) else None
    if isinstance(layers, dict):
        validate_cost_model(data)
    elif isinstance(layers, list):
        validate_profile(data)
    else:
        raise ProfileError("neither a profile (layers: [...]) nor a cost model "
                           "(layers: {...})", None, "layers")


def write_json_atomic(path: str | Path, data: dict[str, Any] | Profile | CostModel) -> Path:
    """Validate `data` as a profile or cost model, then write it as JSON through a temporary
    file in the same directory and an atomic rename: a refused or failed write leaves no file
    (and an existing file untouched)."""
    if isinstance(data, (Profile, CostModel)):
        data = data.model_dump(mode="json")
    _validate_any(data)
    text = json.dumps(data, indent=2, allow_nan=False) + "\n"  # serialises before any open
    target = Path(path)
    write_atomic(target, text.encode("utf-8"))
    return target
