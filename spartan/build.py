"""Attaching a Sparsifier: masked layers (blocks, fallbacks, costs) and their budget groups."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from spartan.config import SparsifierConfig
from spartan.layout import block_grid, block_numel, maskable_weights, owner_of
from spartan.masking import Group, MaskedLayer

log = logging.getLogger("spartan.sparsifier")

CostFn = Callable[[str, nn.Parameter, tuple[int, int]], Tensor | float]
Costs = Mapping[str, Tensor | float] | CostFn | None


def build_layers(model: nn.Module, config: SparsifierConfig, costs: Costs) -> list[MaskedLayer]:
    """One MaskedLayer per maskable weight; a block that does not divide falls back to 1x1."""
    params = maskable_weights(model, config.prefixes)
    if not params:
        raise ValueError("the model has no maskable weights")
    if len({id(p) for p in params.values()}) != len(params):
        raise ValueError("tied weights (one parameter under two names) cannot be masked")
    if isinstance(costs, Mapping):
        unknown = sorted(set(costs) - set(params))
        missing = sorted(set(params) - set(costs))
        if unknown or missing:
            raise ValueError(f"costs do not match the masked weights: unknown {unknown}, "
                             f"missing {missing}")
    layers = []
    for name, p in params.items():
        module, attr = owner_of(model, name)
        if parametrize.is_parametrized(module, attr):
            raise ValueError(f"{name} is already parametrized (another Sparsifier?)")
        block, fallback = config.block, None
        grid = block_grid(p.shape, block)
        if grid is None:
            fallback = f"block {block[0]}x{block[1]} does not divide {tuple(p.shape)}; used 1x1"
            log.warning("%s: %s", name, fallback)
            block, grid = (1, 1), (p.shape[0], p.shape[1])
        cost = layer_cost(name, p, grid, block, costs)
        layers.append(MaskedLayer(name, module, attr, p, block, grid, cost, fallback))
    return layers


def build_groups(layers: list[MaskedLayer], allocation: str) -> list[Group]:
    """Budget groups: all layers under global allocation, one per layer otherwise."""
    if allocation == "global":
        members = [layers]
        if len({lay.param.device for lay in layers}) > 1:
            raise ValueError("global allocation needs all masked weights on one device")
    else:
        members = [[lay] for lay in layers]
    groups = []
    for group in members:
        start = 0
        for lay in group:
            lay.start, lay.stop = start, start + lay.cost.numel()
            start = lay.stop
        # float32 work buffers, float64 when a weight is float64.
        work = torch.float64 if any(
            lay.param.dtype == torch.float64 for lay in group) else torch.float32
        c = torch.cat([lay.cost.reshape(-1) for lay in group]).to(work)
        total = float(c.sum(dtype=torch.float64))
        unit = bool(c.min() == c.max())
        c0 = float(c[0]) if unit else 1.0
        g = Group(group, torch.zeros_like(c), torch.ones_like(c) if unit else c, unit, c0, total)
        g.set_dense()
        groups.append(g)
    return groups


def layer_cost(name: str, p: nn.Parameter, grid: tuple[int, int], block: tuple[int, int],
               costs: Costs) -> Tensor:
    """Per-block cost tensor (float32, shape grid) on the weight's device; default: block size."""
    if costs is None:
        value: Tensor | float = float(block_numel(p.shape, block))
    elif callable(costs):
        value = costs(name, p, grid)
    else:
        value = costs[name]
    t = torch.as_tensor(value, dtype=torch.float32, device=p.device)
    if t.dim() == 0:
        t = t.expand(grid)
    if tuple(t.shape) != grid:
        raise ValueError(f"costs[{name!r}] has shape {tuple(t.shape)}, expected block grid {grid}")
    if not bool(torch.isfinite(t).all()) or not bool((t > 0).all()):
        raise ValueError(f"costs[{name!r}] must be finite and > 0")
    return t.contiguous().clone()


def nm_groups(groups: list[Group], m: int) -> None:
    """Turn per-layer groups into N:M groups (unit costs in the solver); a layer whose rows do
    not split into runs of m keeps an unstructured per-layer budget, noted as a fallback."""
    for g in groups:
        (lay,) = g.layers
        if lay.param[0].numel() % m:
            lay.fallback = f"rows of {tuple(lay.param.shape)} do not split into runs of {m}; " \
                           "unstructured at the same density"
            log.warning("%s: %s", lay.name, lay.fallback)
            continue
        g.nm, g.unit, g.c0 = m, True, g.total_cost / g.n
        g.c = torch.ones_like(g.c)
