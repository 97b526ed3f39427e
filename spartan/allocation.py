"""How a budget is split across layers: global, uniform, or ERK (Evci et al., RigL, ICML 2020).

All three are expressed as the kept fraction of each budget group's total cost; a group is the
whole model for "global" (one knapsack over all blocks) and one layer for "uniform" and "erk".
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def erk_scores(shapes: Sequence[Sequence[int]]) -> list[float]:
    """RigL's Erdos-Renyi-Kernel density scale of each weight: sum(shape) / prod(shape)."""
    return [sum(s) / math.prod(s) for s in shapes]


def erk_fractions(
    fraction: float, shapes: Sequence[Sequence[int]], costs: Sequence[float]
) -> list[float]:
    """Per-layer kept fractions d_l = min(1, eps * score_l) with sum_l d_l C_l = fraction * sum C.

    Layers whose density would exceed 1 are made dense and eps is solved again over the rest,
    as in RigL. C_l is a layer's total cost (its weight count under the default cost).
    """
    if len(shapes) != len(costs) or not shapes:
        raise ValueError("erk_fractions needs one cost per shape and at least one layer")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    if any(not c > 0 for c in costs):
        raise ValueError("layer costs must be > 0")
    if fraction >= 1.0:
        return [1.0] * len(shapes)
    scores = erk_scores(shapes)
    target = fraction * sum(costs)
    dense: set[int] = set()
    while True:
        rest = [i for i in range(len(shapes)) if i not in dense]
        remaining = target - sum(costs[i] for i in dense)
        eps = remaining / sum(scores[i] * costs[i] for i in rest)
        over = {i for i in rest if eps * scores[i] > 1.0}
        if not over:
            break
        dense |= over
    return [1.0 if i in dense else eps * scores[i] for i in range(len(shapes))]


def group_fractions(
    allocation: str, fraction: float, shapes: Sequence[Sequence[int]], costs: Sequence[float]
) -> list[float]:
    """Kept fraction of each budget group at the model-wide kept fraction `fraction`."""
    if allocation == "global":
        return [fraction]
    if allocation == "uniform" or ":" in allocation:  # N:M: one group per layer
        return [fraction] * len(shapes)
    if allocation == "erk":
        return erk_fractions(fraction, shapes, costs)
    raise ValueError(f"allocation must be global, uniform, erk or N:M, got {allocation!r}")
