"""What can be known about a job's cost model before anything runs (no torch: the API's checks).

`budget_problems` finds, for a stored cost model and a job's sparsity settings, the refusals a
worker would otherwise hit after queueing: a cost model fitted for the other structure, for
another model (layers missing or unknown) or other shapes; a latency budget in a cost model
without time units; a budget at or below the fixed cost (overhead and intercepts, which no
sparsity removes) or above the dense cost; a cost model in which no layer's cost depends on
its sparsity. Each comes with the request field to name. `fit_warnings` lists poor fits.

Layer shapes come from jobs' catalog for built-in models (`shapes`, parameter name -> shape);
without them (plugin and hub models) only the checks that need no shapes run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from spartan_service.costmodels.fit_channels import layer_latency
from spartan_service.costmodels.schema import (
    TIME_UNITS,
    CostModel,
    ProfileError,
    total_blocks,
    validate_cost_model,
)

Loc = list[str | int]
POOR_MAPE = 0.20  # a layer's held-out error above this is flagged


def _layer_key(pname: str) -> str:
    return pname[: -len(".weight")] if pname.endswith(".weight") else pname


def channel_layer_shapes(arch: str, shapes: Mapping[str, tuple[int, ...]]
                         ) -> dict[str, tuple[int, ...]]:
    """The layers of a built-in model whose channels can go (spartan.channels), by module
    name, with their weight shapes: every layer of mlp, cnn and resnet; for vit the attention
    modules (heads) and the MLP layers (hidden units), not the residual stream's."""
    out = {}
    for pname, shape in shapes.items():
        if arch == "vit":
            if pname.endswith(".attn.in_proj_weight"):
                out[pname[: -len(".in_proj_weight")]] = shape
            elif ".mlp." in pname:
                out[_layer_key(pname)] = shape
        else:
            out[_layer_key(pname)] = shape
    return out


def _structure(cm: CostModel) -> str:
    kinds = {lay.structure or "weights" for lay in cm.layers.values()}
    return "channels" if kinds == {"channels"} else "weights"


def _split(cm: CostModel, structure: str, shapes: Mapping[str, tuple[int, ...]] | None
           ) -> tuple[float, float] | None:
    """(fixed, variable) of the dense model, or None when the file lacks what it needs."""
    fixed = (cm.overhead or 0.0) + sum(lay.intercept for lay in cm.layers.values())
    variable = 0.0
    for name, lay in cm.layers.items():
        if structure == "channels":
            full = (lay.model_extra or {}).get("full")
            if full is None:
                return None
            variable += layer_latency(lay.model_dump(), float(full[0]), float(full[1])) \
                - lay.intercept
        else:
            shape = lay.shape or (shapes or {}).get(name + ".weight") or (shapes or {}).get(name)
            if shape is None:
                return None
            variable += lay.slope * total_blocks(list(shape), lay.block, name)
    return fixed, variable


def budget_problems(data: Mapping[str, Any], structure: str, budget: float,
                    budget_ms: float | None, arch: str | None = None,
                    shapes: Mapping[str, tuple[int, ...]] | None = None
                    ) -> list[tuple[Loc, str]]:
    """Refusals for a job using this stored cost model (module doc), each with its field."""
    id_loc: Loc = ["body", "cost_model", "id"]
    try:
        cm = validate_cost_model(dict(data))
    except ProfileError as exc:
        return [(id_loc, f"the stored cost model is not usable: {exc}")]
    problems: list[tuple[Loc, str]] = []
    have = _structure(cm)
    if have != structure:
        how = "weight sparsity (latency per nonzero block)" if have == "weights" else \
            "channel sparsity (latency per kept width)"
        return [(id_loc, f"this cost model was fitted for {how}; a job with structure "
                         f"'{structure}' needs one profiled with structure '{structure}'")]
    if shapes is not None and arch is not None:
        expected = channel_layer_shapes(arch, shapes) if structure == "channels" else \
            {_layer_key(p): s for p, s in shapes.items()}
        missing = sorted(set(expected) - set(cm.layers))
        unknown = sorted(set(cm.layers) - set(expected))
        if missing or unknown:
            return [(id_loc, f"this cost model is for another model: it lacks layers "
                             f"{missing or 'none'} and has layers {unknown or 'none'} that "
                             f"model '{arch}' does not")]
        wrong = [f"{n} {list(lay.shape)} (model {list(expected[n])})"
                 for n, lay in cm.layers.items()
                 if lay.shape is not None and tuple(lay.shape) != tuple(expected[n])]
        if wrong:
            return [(id_loc, "this cost model was fitted for other shapes: "
                             + ", ".join(wrong[:6]))]
    unit = cm.unit
    ms_loc: Loc = ["body", "cost_model", "budget_ms"]
    if budget_ms is not None and unit not in TIME_UNITS:
        return [(ms_loc, f"budget_ms needs a latency cost model; this one is in {unit}")]
    split = _split(cm, structure, shapes)
    if split is None:
        return problems
    fixed, variable = split
    if variable <= 0:
        return [(id_loc, "in this cost model no layer's cost depends on its sparsity (every "
                         "slope is 0: no sparse kernel beat dense), so no budget is usable")]
    dense = fixed + variable
    loc: Loc = ms_loc if budget_ms is not None else ["body", "sparsity", "budget"]
    target = budget_ms if budget_ms is not None else budget * dense
    shown = f"{target:.4g} {unit}" if budget_ms is not None else \
        f"{budget:g} of the dense {dense:.4g} {unit} = {target:.4g} {unit}"
    if target <= fixed:
        problems.append((loc, f"budget {shown} is not above this cost model's fixed cost "
                              f"{fixed:.4g} {unit} (overhead and intercepts, which no sparsity "
                              f"removes); the smallest usable budget is above {fixed:.4g} "
                              f"{unit} ({fixed / dense:.3g} of dense)"))
    elif budget_ms is not None and target > dense * (1 + 1e-9):
        problems.append((loc, f"budget {shown} is above the dense model's predicted "
                              f"{dense:.4g} {unit}: nothing to prune for"))
    return problems


def fit_warnings(data: Mapping[str, Any]) -> list[str]:
    """Poor fits of a cost model: a layer's held-out MAPE over 20%, a layer whose chosen
    kernel never beat dense (slope 0: sparsity buys it nothing), a whole-model calibration
    error over 10%."""
    out = []
    layers = data.get("layers") or {}
    for name, lay in layers.items():
        mape = lay.get("mape")
        if isinstance(mape, (int, float)) and math.isfinite(mape) and mape > POOR_MAPE:
            out.append(f"layer {name}: held-out error {mape:.0%} (over {POOR_MAPE:.0%}): its "
                       "latency predictions are unreliable; profile again without --quick, "
                       "on a quiet machine")
        if lay.get("structure") != "channels" and lay.get("slope") == 0 and \
                data.get("unit") in TIME_UNITS:
            out.append(f"layer {name}: no sparse kernel beat dense ({lay.get('kernel', '?')}"
                       "); sparsity buys no latency on this layer")
    cal = (data.get("calibration") or {}).get("whole_model_mape")
    if isinstance(cal, (int, float)) and cal > 0.10:
        out.append(f"whole model: the calibrated prediction is off by {cal:.0%} on average")
    return out
