"""Costs of structured (channel) sparsity: per layer, a function of its kept widths.

A layer's cost at kept input width i and kept output width o is

    cost = intercept + slope * pairs(i, o) + slope_out * o + slope_in * i,

pairs being the input-output channel pairs its weight connects: i x o for a Linear or an
attention module (o = kept heads x head_dim, i its embedding width), i x o / groups for a
grouped conv, o for a depthwise conv (one input per output). The pairs term is the matrix
multiply; slope_out carries per-output work (bias, the attention core for heads), slope_in
per-input work (reading the input). Fitted latency models (costmodels) and the built-in
params and FLOPs models below share the form.

Removing an item changes the widths on both sides of each layer it lives in, so its cost
depends on which neighbours are kept. `item_costs` re-linearises at the current kept set: a
kept item costs what its removal saves, a dropped item what its return would add, each with
every other item as it is. The Sparsifier does this at every mask update until the masks
freeze, and meets the budget on the exact (bilinear) cost, not the linearisation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from spartan.attention_layout import has_bias
from spartan.channels import ChannelGraph, Layer

_TINY = 1e-9  # relative floor of an item's cost: the solver needs costs > 0


@dataclass(frozen=True)
class LayerCost:
    intercept: float = 0.0
    slope: float = 0.0  # per connected input-output channel pair
    slope_out: float = 0.0
    slope_in: float = 0.0

    @classmethod
    def from_dict(cls, name: str, d: Mapping[str, Any] | LayerCost) -> LayerCost:
        if isinstance(d, LayerCost):
            return d
        try:
            out = cls(float(d.get("intercept", 0.0)), float(d["slope"]),
                      float(d.get("slope_out", 0.0)), float(d.get("slope_in", 0.0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"costs[{name!r}] needs numbers intercept, slope (and optional "
                             f"slope_out, slope_in): {exc}") from None
        for k in ("slope", "slope_out", "slope_in"):
            v = getattr(out, k)
            if not math.isfinite(v) or v < 0:
                raise ValueError(f"costs[{name!r}].{k} must be finite and >= 0, got {v}")
        if not math.isfinite(out.intercept):
            raise ValueError(f"costs[{name!r}].intercept must be finite")
        return out


def pairs(layer: Layer, kin: Tensor | float, kout: Tensor | float) -> Tensor | float:
    """Connected input-output channel pairs of a layer at kept widths (see module doc)."""
    if layer.depthwise:
        return kout
    groups = getattr(layer.module, "groups", 1) if layer.kind == "conv" else 1
    return kin * kout / groups


def variable_cost(layer: Layer, cost: LayerCost, kin: Tensor | float,
                  kout: Tensor | float) -> Tensor | float:
    return cost.slope * pairs(layer, kin, kout) + cost.slope_out * kout + cost.slope_in * kin


def widths(layer: Layer, keep: Tensor) -> tuple[float, float]:
    """(kept inputs, kept outputs) of a layer under an item mask (pinned channels count)."""
    ext = torch.cat([keep.to(torch.float64), torch.ones(1, dtype=torch.float64,
                                                        device=keep.device)])
    n = keep.numel()
    kin = float(ext[_ext(layer.in_items, n)].sum())
    kout = float(ext[_ext(layer.out_items, n)].sum()) * layer.head_dim
    return kin, kout


def _ext(items: Tensor, n: int) -> Tensor:
    return torch.where(items >= 0, items, n)


def total_cost(graph: ChannelGraph, costs: Mapping[str, LayerCost], keep: Tensor) -> float:
    """Exact variable cost (no intercepts) of the kept items."""
    total = 0.0
    for name, lay in graph.layers.items():
        kin, kout = widths(lay, keep)
        total += float(variable_cost(lay, costs[name], kin, kout))
    return total


def item_costs(graph: ChannelGraph, costs: Mapping[str, LayerCost], keep: Tensor) -> Tensor:
    """Cost of each item at the kept set `keep` (float64): what removing a kept item saves,
    what adding a dropped one adds, the other items as they are."""
    n = graph.n_items
    keep = keep.to("cpu")
    out = torch.zeros(n, dtype=torch.float64)
    sign = torch.where(keep, -1.0, 1.0).to(torch.float64)
    for name, lay in graph.layers.items():
        kin, kout = widths(lay, keep)
        cnt_in = torch.bincount(lay.in_items[lay.in_items >= 0].cpu(), minlength=n).double()
        cnt_out = torch.bincount(lay.out_items[lay.out_items >= 0].cpu(),
                                 minlength=n).double() * lay.head_dim
        c = costs[name]
        base = variable_cost(lay, c, kin, kout)
        moved = variable_cost(lay, c, kin + sign * cnt_in, kout + sign * cnt_out)
        out += torch.as_tensor(moved - base).abs()
    top = float(out.max()) if n else 0.0
    return out.clamp_min(max(top, 1.0) * _TINY)


def dense_costs(graph: ChannelGraph, costs: Mapping[str, LayerCost]) -> dict[str, float]:
    """Variable cost of each layer at full width."""
    keep = torch.ones(graph.n_items, dtype=torch.bool)
    out = {}
    for name, lay in graph.layers.items():
        kin, kout = widths(lay, keep)
        out[name] = float(variable_cost(lay, costs[name], kin, kout))
    return out


def check_costs(graph: ChannelGraph, costs: Mapping[str, Any] | None) -> dict[str, LayerCost]:
    """Per-layer costs for the graph: the given ones (every layer named, none other), or the
    built-in parameter count."""
    if costs is None:
        return builtin_costs(graph, "params")
    if not isinstance(costs, Mapping):
        raise ValueError("structure='channels' takes costs as a mapping layer name -> "
                         "{intercept, slope, slope_out, slope_in} (see spartan.channel_costs)")
    missing = sorted(set(graph.layers) - set(costs))
    unknown = sorted(set(costs) - set(graph.layers))
    if missing or unknown:
        raise ValueError(f"costs do not match the prunable layers: missing {missing}, "
                         f"unknown {unknown}")
    return {n: LayerCost.from_dict(n, costs[n]) for n in graph.layers}


def _kernel_extent(module: nn.Module) -> int:
    w = getattr(module, "weight", None)
    return math.prod(w.shape[2:]) if isinstance(w, Tensor) and w.dim() > 2 else 1


def builtin_costs(graph: ChannelGraph, kind: str) -> dict[str, LayerCost]:
    """params: weights (and biases) each layer keeps; flops: multiply-adds per example, 2 per
    weight per output position (attention adds its core: 4 x tokens^2 per kept channel)."""
    if kind not in ("params", "flops"):
        raise ValueError(f"built-in structured costs are params or flops, got {kind!r}")
    out = {}
    for name, lay in graph.layers.items():
        mod = lay.module
        if lay.kind == "attention":
            bias = _attention_bias(mod)
            if kind == "params":
                out[name] = LayerCost(0.0, 4.0, 3.0 if bias else 0.0, 0.0)
            else:
                t = lay.positions
                out[name] = LayerCost(0.0, 8.0 * t, 4.0 * t * t, 0.0)
            continue
        k = _kernel_extent(mod)
        has_bias = 1.0 if getattr(mod, "bias", None) is not None else 0.0
        if kind == "params":
            out[name] = LayerCost(0.0, float(k), has_bias, 0.0)
        else:
            out[name] = LayerCost(0.0, 2.0 * k * lay.positions, 0.0, 0.0)
    return out


def _attention_bias(mod: nn.Module) -> bool:
    if isinstance(mod, nn.MultiheadAttention):
        return mod.in_proj_bias is not None
    return has_bias(mod)


def cost_model_file(graph: ChannelGraph, kind: str) -> dict[str, Any]:
    """A built-in structured cost model in the cost-model file format (costmodels)."""
    layers = {}
    for name, c in builtin_costs(graph, kind).items():
        lay = graph.layers[name]
        layers[name] = {"intercept": 0.0, "slope": c.slope, "slope_out": c.slope_out,
                        "slope_in": c.slope_in, "block": [1, 1], "r2": 1.0, "mape": 0.0,
                        "structure": "channels", "shape": list(lay.weight.shape)}
    return {"unit": kind, "device": "any", "overhead": 0.0, "structure": "channels",
            "layers": layers}
