"""A channel mask as the report's rows: each layer's kept widths, weights and exact cost."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from spartan.channel_costs import LayerCost, variable_cost, widths
from spartan.channels import ChannelGraph
from spartan.report import LayerReport


def layer_reports(graph: ChannelGraph, costs: Mapping[str, LayerCost], keep: Tensor,
                  budget_cost: float) -> tuple[LayerReport, ...]:
    """One row per layer for the kept items `keep`; budget_share against `budget_cost`."""
    rows = []
    full = torch.ones_like(keep)
    for name, lay in graph.layers.items():
        kin, kout = widths(lay, keep)
        din, dout = widths(lay, full)
        cost = float(variable_cost(lay, costs[name], din, dout))
        kept_cost = float(variable_cost(lay, costs[name], kin, kout))
        w = lay.weight
        per = w.numel() / max(1.0, din * dout)
        rows.append(LayerReport(
            name=lay.name, shape=tuple(w.shape), block=(1, 1),
            blocks=int(lay.out_items.numel()),
            kept_blocks=int(round(kout / lay.head_dim)), weights=w.numel(),
            kept_weights=int(round(per * kin * kout)), cost=cost, kept_cost=kept_cost,
            budget_share=kept_cost / budget_cost if budget_cost > 0 else 0.0))
    return tuple(rows)
