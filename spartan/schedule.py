"""Schedules of a sparse training run: kept fraction (warmup), beta (anneal), finetune freeze.

Step t counts optimiser steps done (0 before the first). The kept fraction goes 1 -> budget over
the first warmup_frac of total_steps; beta goes beta_init -> beta_final until the finetune phase
(the last finetune_frac of total_steps), where masks freeze.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from spartan.config import SparsifierConfig


def anneal(start: float, end: float, progress: float, kind: str) -> float:
    """Value at progress in [0, 1] of a linear or cosine anneal from start to end."""
    if kind not in ("linear", "cosine"):
        raise ValueError(f"schedule must be 'linear' or 'cosine', got {kind!r}")
    p = min(max(progress, 0.0), 1.0)
    if p == 1.0:
        return end  # exactly: the final budget must not lose a block to rounding
    if kind == "linear":
        return start + (end - start) * p
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * p))


@dataclass(frozen=True)
class Schedule:
    """Schedules for one run of `total_steps` optimiser steps."""

    config: SparsifierConfig
    total_steps: int

    def __post_init__(self) -> None:
        t = self.total_steps
        if isinstance(t, bool) or not isinstance(t, int) or t < 1:
            raise ValueError(f"total_steps must be a positive int, got {t!r}")

    @property
    def warmup_steps(self) -> int:
        # Never past the freeze, so frozen masks always meet the final budget.
        return min(round(self.config.warmup_frac * self.total_steps), self.freeze_step)

    @property
    def freeze_step(self) -> int:
        """First step whose masks are final and frozen (start of the finetune phase)."""
        return self.total_steps - round(self.config.finetune_frac * self.total_steps)

    def fraction(self, step: int) -> float:
        """Kept fraction of the total cost at `step`."""
        w = self.warmup_steps
        progress = 1.0 if w == 0 else step / w
        return anneal(1.0, self.config.budget, progress, self.config.schedule)

    def beta(self, step: int) -> float:
        """beta at `step`, before the sqrt(block size) factor."""
        f = self.freeze_step
        progress = 1.0 if f == 0 else step / f
        c = self.config
        return anneal(c.beta_init, c.beta_final, progress, c.schedule)

    def frozen(self, step: int) -> bool:
        return step >= self.freeze_step
