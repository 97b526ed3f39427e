"""Profile and cost-model validation: every bad kind refused, naming layer and field."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from spartan_service.costmodels import (
    ProfileError,
    load_profile,
    validate_cost_model,
    validate_profile,
)
from spartan_service.costmodels.io import write_json_atomic

Edit = Callable[[dict[str, Any]], None]


def _set_latency(value: float) -> Edit:
    def edit(p: dict[str, Any]) -> None:
        p["layers"][1]["samples"][2]["latency"] = value
    return edit


def _set_nnz(value: Any) -> Edit:
    def edit(p: dict[str, Any]) -> None:
        p["layers"][1]["samples"][2]["nnz_blocks"] = value
    return edit


def _duplicate(p: dict[str, Any]) -> None:
    p["layers"][1]["name"] = "fc1"


def _few_densities(p: dict[str, Any]) -> None:
    p["layers"][1]["samples"] = p["layers"][1]["samples"][:2] * 3


BAD: list[tuple[str, Edit, str | None, str]] = [
    ("nan latency", _set_latency(math.nan), "fc2", "samples[2].latency"),
    ("inf latency", _set_latency(math.inf), "fc2", "samples[2].latency"),
    ("negative latency", _set_latency(-0.1), "fc2", "samples[2].latency"),
    ("string latency", _set_latency("fast"), "fc2", "samples[2].latency"),  # type: ignore[arg-type]
    ("negative nnz", _set_nnz(-3), "fc2", "samples[2].nnz_blocks"),
    ("impossible nnz", _set_nnz(10 * 256 + 1), "fc2", "samples[2].nnz_blocks"),
    ("fractional nnz", _set_nnz(2.5), "fc2", "samples[2].nnz_blocks"),
    ("duplicate name", _duplicate, "fc1", "name"),
    ("few densities", _few_densities, "fc2", "samples"),
    ("unknown unit", lambda p: p.update(unit="minutes"), None, "unit"),
    ("no layers", lambda p: p.update(layers=[]), None, "layers"),
    ("block not dividing", lambda p: p["layers"][1].update(block=[3, 1]), "fc2", "block"),
]


@pytest.mark.parametrize(("edit", "layer", "field"), [b[1:] for b in BAD],
                         ids=[b[0] for b in BAD])
def test_bad_profile_refused_and_nothing_written(profile: dict[str, Any], tmp_path: Path,
                                                 edit: Edit, layer: str | None,
                                                 field: str) -> None:
    bad = copy.deepcopy(profile)
    edit(bad)
    with pytest.raises(ProfileError) as info:
        validate_profile(bad)
    assert (info.value.layer, info.value.field) == (layer, field)
    assert field in str(info.value)
    if layer is not None:
        assert repr(layer) in str(info.value)
    out = tmp_path / "profile.json"
    with pytest.raises(ProfileError):
        write_json_atomic(out, bad)
    assert list(tmp_path.iterdir()) == []


def test_refused_write_keeps_existing_file(profile: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "profile.json"
    write_json_atomic(out, profile)
    before = out.read_text()
    bad = copy.deepcopy(profile)
    _set_latency(-1.0)(bad)
    with pytest.raises(ProfileError):
        write_json_atomic(out, bad)
    assert out.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["profile.json"]


def test_units_normalised_to_ms(profile: dict[str, Any], tmp_path: Path) -> None:
    in_us = copy.deepcopy(profile)
    in_us["unit"] = "us"
    for lay in in_us["layers"]:
        for s in lay["samples"]:
            s["latency"] *= 1000
    path = tmp_path / "p.json"
    path.write_text(json.dumps(in_us))
    loaded = load_profile(path)
    assert loaded.unit == "ms"
    want = profile["layers"][0]["samples"][0]["latency"]
    assert loaded.layers[0].samples[0].latency == pytest.approx(want)


def test_extra_fields_kept(profile: dict[str, Any]) -> None:
    profile["layers"][0]["kernel"] = "csr"
    profile["layers"][0]["custom"] = {"x": 1}
    dumped = validate_profile(profile).model_dump()
    assert dumped["layers"][0]["custom"] == {"x": 1}


def test_invalid_json_file(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text("{not json")
    with pytest.raises(ProfileError, match="not valid JSON"):
        load_profile(path)


@pytest.mark.parametrize(("field", "value"), [("slope", -1.0), ("intercept", math.nan),
                                              ("r2", math.inf)])
def test_bad_cost_model_refused(field: str, value: float) -> None:
    cm = {"unit": "ms", "device": "x",
          "layers": {"fc1": {"intercept": 0.1, "slope": 1e-4, "block": [1, 1]}}}
    cm["layers"]["fc1"][field] = value  # type: ignore[index]
    with pytest.raises(ProfileError) as info:
        validate_cost_model(cm)
    assert (info.value.layer, info.value.field) == ("fc1", field)


def test_cost_model_seconds_to_ms() -> None:
    cm = validate_cost_model({"unit": "s", "overhead": 0.001, "layers": {
        "fc1": {"intercept": 0.001, "slope": 1e-6}}})
    assert (cm.unit, cm.layers["fc1"].intercept, cm.layers["fc1"].slope, cm.overhead) == \
        ("ms", pytest.approx(1.0), pytest.approx(1e-3), pytest.approx(1.0))
