"""The profile file and the cost-model file (formats in shared/DESIGN.md), with validation.

No torch here: the API validates and fits uploaded profiles without loading it.

Profile file (what `spartan profile` writes)::

    {"device": "cpu", "unit": "ms", "machine": {...}, "overhead": 0.02,
     "layers": [{"name": "fc1", "shape": [256, 64], "block": [1, 1], "kernel": "csr",
                 "dense_latency": 0.05,
                 "samples": [{"nnz_blocks": 1638, "latency": 0.052, "spread": 0.001}, ...]}]}

Cost-model file (what `spartan fit` writes)::

    {"unit": "ms", "device": "cpu", "overhead": 0.02,
     "layers": {"fc1": {"intercept": ..., "slope": ..., "block": [1, 1], "r2": ..., "mape": ...}}}

`machine`, `overhead` (time of everything but the maskable layers), `kernel`, `dense_latency`,
`shape` and `spread` are extensions; unknown keys are kept. Time units "s", "ms" and "us" are
accepted; `validate_profile` and `validate_cost_model` convert them to "ms".
"""

from __future__ import annotations

import math
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

TIME_UNITS = {"s": 1e3, "ms": 1.0, "us": 1e-3}
COST_UNITS = (*TIME_UNITS, "params", "flops")
MIN_DENSITIES = 3  # distinct nnz values per layer: two fix a line, a third checks it


class ProfileError(ValueError):
    """A profile or cost model that cannot be used; names the layer and the field at fault."""

    def __init__(self, message: str, layer: str | None = None, field: str | None = None) -> None:
        self.layer, self.field, self.reason = layer, field, message
        where = f"layer {layer!r}" if layer is not None else "profile"
        super().__init__(f"{where}, field {field!r}: {message}" if field else f"{where}: {message}")


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Sample(_Open):
    nnz_blocks: int
    latency: float
    spread: float | None = None


class ProfileLayer(_Open):
    name: str = Field(min_length=1)
    shape: list[int]
    block: tuple[int, int] = (1, 1)
    samples: list[Sample]
    kernel: str | None = None
    dense_latency: float | None = None

    @model_validator(mode="after")
    def _check(self) -> ProfileLayer:
        name = self.name
        if len(self.shape) < 2 or any(s <= 0 for s in self.shape):
            raise ProfileError(f"needs 2+ positive dims, got {self.shape}", name, "shape")
        total = total_blocks(self.shape, self.block, name)
        for i, s in enumerate(self.samples):
            if not _finite(s.latency) or s.latency <= 0:
                raise ProfileError(f"must be finite and > 0, got {s.latency}", name,
                                   f"samples[{i}].latency")
            if s.spread is not None and (not _finite(s.spread) or s.spread < 0):
                raise ProfileError(f"must be finite and >= 0, got {s.spread}", name,
                                   f"samples[{i}].spread")
            if not 0 <= s.nnz_blocks <= total:
                raise ProfileError(f"{s.nnz_blocks} is outside [0, {total}] (blocks of "
                                   f"{self.block} in shape {self.shape})", name,
                                   f"samples[{i}].nnz_blocks")
        distinct = len({s.nnz_blocks for s in self.samples})
        if distinct < MIN_DENSITIES:
            raise ProfileError(f"{distinct} distinct nnz_blocks values; the fit needs "
                               f"{MIN_DENSITIES} or more", name, "samples")
        if self.dense_latency is not None and (not _finite(self.dense_latency)
                                               or self.dense_latency <= 0):
            raise ProfileError(f"must be finite and > 0, got {self.dense_latency}", name,
                               "dense_latency")
        return self


class Profile(_Open):
    device: str = "unknown"
    unit: str = "ms"
    layers: list[ProfileLayer]
    machine: dict[str, Any] | None = None
    overhead: float | None = None

    @model_validator(mode="after")
    def _check(self) -> Profile:
        _check_unit(self.unit, TIME_UNITS)
        if not self.layers:
            raise ProfileError("no layers", None, "layers")
        seen: set[str] = set()
        for layer in self.layers:
            if layer.name in seen:
                raise ProfileError("duplicate layer name", layer.name, "name")
            seen.add(layer.name)
        _check_overhead(self.overhead)
        return self


class CostLayer(_Open):
    intercept: float
    slope: float  # per nonzero block; structured: per connected input-output channel pair
    slope_out: float | None = None  # structured: per kept output channel
    slope_in: float | None = None  # structured: per kept input channel
    structure: str | None = None  # "channels" for a structured layer
    block: tuple[int, int] = (1, 1)
    r2: float | None = None
    mape: float | None = None
    shape: list[int] | None = None
    kernel: str | None = None


class CostModel(_Open):
    unit: str = "ms"
    device: str = "unknown"
    layers: dict[str, CostLayer]
    machine: dict[str, Any] | None = None
    overhead: float | None = None

    @model_validator(mode="after")
    def _check(self) -> CostModel:
        _check_unit(self.unit, COST_UNITS)
        if not self.layers:
            raise ProfileError("no layers", None, "layers")
        for name, lay in self.layers.items():
            if not _finite(lay.intercept):
                raise ProfileError(f"must be finite, got {lay.intercept}", name, "intercept")
            if not _finite(lay.slope) or lay.slope < 0:
                raise ProfileError(f"must be finite and >= 0, got {lay.slope}", name, "slope")
            for key in ("slope_out", "slope_in"):
                value = getattr(lay, key)
                if value is not None and (not _finite(value) or value < 0):
                    raise ProfileError(f"must be finite and >= 0, got {value}", name, key)
            for key in ("r2", "mape"):
                value = getattr(lay, key)
                if value is not None and not _finite(value):
                    raise ProfileError(f"must be finite, got {value}", name, key)
            if lay.shape is not None:
                total_blocks(lay.shape, lay.block, name)
        _check_overhead(self.overhead)
        return self


def total_blocks(shape: list[int] | tuple[int, ...], block: tuple[int, int],
                 layer: str | None = None) -> int:
    """Blocks of `block` over a weight's first two dims (spartan.layout.block_grid, no torch)."""
    r, c = block
    if r <= 0 or c <= 0:
        raise ProfileError(f"must be two positive ints, got {list(block)}", layer, "block")
    if shape[0] % r or shape[1] % c:
        raise ProfileError(f"{list(block)} does not divide shape {list(shape)}", layer, "block")
    return (shape[0] // r) * (shape[1] // c)


def _finite(x: float) -> bool:
    return math.isfinite(x)


def _check_unit(unit: str, allowed: Any) -> None:
    if unit not in allowed:
        raise ProfileError(f"unknown unit {unit!r}; use one of {', '.join(allowed)}", None,
                           "unit")


def _check_overhead(overhead: float | None) -> None:
    if overhead is not None and (not _finite(overhead) or overhead < 0):
        raise ProfileError(f"must be finite and >= 0, got {overhead}", None, "overhead")


def _unwrap(exc: ValidationError, data: Any) -> ProfileError:
    """The first pydantic error as a ProfileError naming the layer (by name) and the field."""
    err = exc.errors()[0]
    original = (err.get("ctx") or {}).get("error")
    if isinstance(original, ProfileError):
        return original
    loc = list(err["loc"])
    layer = None
    if len(loc) >= 2 and loc[0] == "layers":
        key = loc[1]
        layer = str(key)
        layers = data.get("layers") if isinstance(data, dict) else None
        if isinstance(key, int) and isinstance(layers, list) and key < len(layers):
            entry = layers[key]
            name = entry.get("name") if isinstance(entry, dict) else None
            layer = name if isinstance(name, str) else f"#{key}"
        loc = loc[2:]
    field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    return ProfileError(err["msg"], layer, field or None)


_Model = TypeVar("_Model", bound=BaseModel)


def _to_ms(unit: str) -> float:
    return TIME_UNITS[unit]


def _parse(cls: type[_Model], data: Any, what: str) -> _Model:
    """cls parsed from a dict (or a model of it, re-checked); ProfileError naming the layer and
    field otherwise."""
    if isinstance(data, cls):
        data = data.model_dump()
    if not isinstance(data, dict):
        raise ProfileError(f"{what} is a JSON object, got {type(data).__name__}")
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise _unwrap(exc, data) from None


def validate_profile(data: dict[str, Any] | Profile) -> Profile:
    """Parse and check a profile; latencies come back in ms. Raises ProfileError."""
    prof = _parse(Profile, data, "a profile")
    k = _to_ms(prof.unit)
    if k != 1.0:
        for layer in prof.layers:
            for s in layer.samples:
                s.latency *= k
                s.spread = None if s.spread is None else s.spread * k
            if layer.dense_latency is not None:
                layer.dense_latency *= k
        prof.overhead = None if prof.overhead is None else prof.overhead * k
        prof.unit = "ms"
    return prof


def validate_cost_model(data: dict[str, Any] | CostModel) -> CostModel:
    """Parse and check a cost model; time units come back in ms. Raises ProfileError."""
    cm = _parse(CostModel, data, "a cost model")
    if cm.unit in TIME_UNITS and cm.unit != "ms":
        k = _to_ms(cm.unit)
        for lay in cm.layers.values():
            lay.intercept *= k
            lay.slope *= k
            lay.slope_out = None if lay.slope_out is None else lay.slope_out * k
            lay.slope_in = None if lay.slope_in is None else lay.slope_in * k
        cm.overhead = None if cm.overhead is None else cm.overhead * k
        cm.unit = "ms"
    return cm
