"""The channel knapsack: which items each budget group keeps for a fraction of the dense cost.

Costs (spartan.channel_costs) are bilinear in a layer's widths: an item's cost is the latency
its removal saves at the current widths on both sides, so it is re-linearised at the current
mask and the knapsack solved again (up to _FIX_ITERS times per mask update, 5x as often at the
freeze) until the exact cost of the kept items fits the budget; at the freeze the lowest value
per cost items are trimmed until it does. The Sparsifier runs this at every mask update until
the freeze. Floors: each layer group (the items living in the same layers) keeps at least
ceil(min_keep x its items), and at least one: its items of largest value.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from spartan.channel_costs import LayerCost, dense_costs, item_costs, total_cost
from spartan.channels import ChannelGraph
from spartan.config import SparsifierConfig
from spartan.topk import hard_threshold, solve_threshold

_FIX_ITERS = 4  # re-linearise and re-solve while the exact cost is over the budget


class ItemBudget:
    """Budget groups (all items for global allocation, one per layer group for uniform), their
    floors, and the solve (module doc)."""

    def __init__(self, graph: ChannelGraph, costs: dict[str, LayerCost],
                 config: SparsifierConfig) -> None:
        self.graph, self.costs, self.config = graph, costs, config
        self.groups = [torch.arange(graph.n_items)] if config.allocation == "global" else \
            [grp.clone() for grp in graph.groups]
        self.floor = {int(i): max(1, math.ceil(config.min_keep * len(grp)))
                      for i, grp in enumerate(graph.groups)}
        self.dense_total = sum(dense_costs(graph, costs).values())

    def update(self, v: Tensor, fraction: float, beta: float, final: bool, prev: Tensor,
               old: list[dict[str, Any] | None]) -> tuple[Tensor, list[dict[str, Any] | None],
                                                          Tensor]:
        """(hard mask, soft-mask states per budget group, item costs) keeping `fraction` of
        the dense cost; prev / old: the current hard mask and soft states (imp keeps pruned
        items out; tau starts from the old one)."""
        cfg = self.config
        target = fraction * self.dense_total
        prev = prev.clone()
        h = prev
        c = item_costs(self.graph, self.costs, h)
        soft: list[dict[str, Any] | None] = []
        for _ in range(_FIX_ITERS * (5 if final else 1)):
            c = item_costs(self.graph, self.costs, h)
            h, soft = self._solve(v, c, h, prev, fraction, target, beta, old)
            if cfg.allocation != "global" or total_cost(self.graph, self.costs, h) <= target \
                    * (1 + 1e-9):
                break
        if final and cfg.allocation == "global":
            h = self._trim(v, h, target)
        return h, soft, c

    def _solve(self, v: Tensor, c: Tensor, h_lin: Tensor, prev: Tensor, fraction: float,
               target: float, beta: float, old_soft: list[dict[str, Any] | None]
               ) -> tuple[Tensor, list[dict[str, Any] | None]]:
        cfg, g = self.config, self.graph
        h = torch.zeros_like(prev)
        softs: list[dict[str, Any] | None] = []
        for bi, idx in enumerate(self.groups):
            if cfg.allocation == "global":  # exact cost linearised at h_lin
                budget = target - total_cost(g, self.costs, h_lin) + float(c[h_lin].sum())
            else:
                budget = fraction * float(c[idx].sum())
            forced = self.forced(v, idx)
            h[forced] = True
            pool = idx[~torch.isin(idx, forced)]
            if cfg.method == "imp":
                pool = pool[prev[pool]]  # pruned items never come back
            left = budget - float(c[forced].sum())
            total = float(c[pool].sum())
            state = None
            if pool.numel() and left >= total:
                h[pool] = True
            elif pool.numel() and left > 0:
                vp, cp = v[pool].float(), c[pool].float()
                h[pool] = hard_threshold(vp, cp, left)
                if cfg.method == "spartan":
                    mean = float(vp.sum()) / float(cp.sum())
                    b = beta / mean if cfg.beta_scale == "mean" and mean > 0 else beta
                    old = old_soft[bi] if bi < len(old_soft) else None
                    warm = old["tau"] if old is not None and old["free"].numel() == pool.numel() \
                        else None
                    tau = solve_threshold(vp, cp, left, b, tau_init=warm)
                    state = {"free": pool, "c": cp, "tau": float(tau), "beta": float(b)}
            softs.append(state)
        return h, softs

    def floor_fraction(self, v: Tensor, min_keep: float | None = None) -> float:
        """Fraction of the dense (variable) cost that the floors alone keep, at `min_keep`
        (default: the config's): a budget below it cannot be met."""
        floors = self.floor
        if min_keep is not None:
            floors = {int(i): max(1, math.ceil(min_keep * len(grp)))
                      for i, grp in enumerate(self.graph.groups)}
        keep = torch.zeros(self.graph.n_items, dtype=torch.bool, device=v.device)
        for gi, members in enumerate(self.graph.groups):
            members = members.to(v.device)
            top = torch.topk(v[members].float(), min(floors[gi], members.numel())).indices
            keep[members[top]] = True
        return total_cost(self.graph, self.costs, keep) / self.dense_total

    def forced(self, v: Tensor, idx: Tensor) -> Tensor:
        """The floor of each layer group inside `idx`: its items of largest value."""
        out = []
        for gi in torch.unique(self.graph.item_group[idx]).tolist():
            members = idx[self.graph.item_group[idx] == gi]
            k = min(self.floor[int(gi)], members.numel())
            out.append(members[torch.topk(v[members], k).indices])
        return torch.cat(out) if out else idx[:0]

    def _trim(self, v: Tensor, h: Tensor, target: float) -> Tensor:
        """Drop the lowest value-per-cost free items until the exact cost fits (final masks)."""
        h = h.clone()
        forced = set()
        for idx in self.groups:
            forced |= set(self.forced(v, idx).tolist())
        while total_cost(self.graph, self.costs, h) > target * (1 + 1e-9):
            c = item_costs(self.graph, self.costs, h)
            cand = [i for i in torch.nonzero(h).squeeze(1).tolist() if i not in forced]
            if not cand:
                break
            worst = min(cand, key=lambda i: float(v[i]) / float(c[i]))
            h[worst] = False
        return h
