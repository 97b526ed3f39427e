"""Per-layer report of a sparsified model (what `Sparsifier.report()` and `finalize()` return)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LayerReport:
    """One masked weight: how much of it is kept and what it costs."""

    name: str
    shape: tuple[int, ...]
    block: tuple[int, int]  # block in use; 1x1 after a fallback
    blocks: int
    kept_blocks: int
    weights: int
    kept_weights: int
    cost: float  # total cost of the layer's blocks
    kept_cost: float
    budget_share: float | None  # kept_cost / (budget x total cost); None when unmasked
    fallback: str | None = None  # why the configured block was not used

    @property
    def kept_fraction(self) -> float:
        return self.kept_weights / self.weights

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["shape"], d["block"] = list(self.shape), list(self.block)
        d["kept_fraction"] = self.kept_fraction
        return d


@dataclass(frozen=True)
class SparsityReport:
    """All masked weights, with model-wide totals."""

    method: str
    allocation: str
    budget: float  # target kept fraction of the total cost
    step: int
    layers: tuple[LayerReport, ...]

    @property
    def cost(self) -> float:
        return sum(r.cost for r in self.layers)

    @property
    def kept_cost(self) -> float:
        return sum(r.kept_cost for r in self.layers)

    @property
    def kept_cost_fraction(self) -> float:
        return self.kept_cost / self.cost

    @property
    def density(self) -> float:
        """Kept weights / masked weights."""
        return sum(r.kept_weights for r in self.layers) / sum(r.weights for r in self.layers)

    @property
    def fallbacks(self) -> list[str]:
        return [r.name for r in self.layers if r.fallback]

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "allocation": self.allocation,
            "budget": self.budget,
            "step": self.step,
            "cost": self.cost,
            "kept_cost": self.kept_cost,
            "kept_cost_fraction": self.kept_cost_fraction,
            "density": self.density,
            "fallbacks": self.fallbacks,
            "layers": [r.to_dict() for r in self.layers],
        }
