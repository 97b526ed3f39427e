"""Configuration of a Sparsifier (fields and defaults are a contract: see DESIGN.md)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

from spartan.layout import check_block
from spartan.nm import parse_nm

Method = Literal["spartan", "dual_averaging", "imp"]
Allocation = str  # "global", "uniform", "erk" or "N:M" such as "2:4"
ScheduleKind = Literal["linear", "cosine"]
BetaScale = Literal["mean", "none"]

METHODS = ("spartan", "dual_averaging", "imp")
ALLOCATIONS = ("global", "uniform", "erk")
SCHEDULES = ("linear", "cosine")
BETA_SCALES = ("mean", "none")
STRUCTURES = ("weights", "channels")


@dataclass(frozen=True)
class SparsifierConfig:
    """What to sparsify, to which budget, and how.

    method: "spartan" (soft top-k masks with dual averaging, Tai, Tian & Lim 2022),
        "dual_averaging" (Top-KAST without backward sparsity: hard mask forward, dense
        straight-through backward) or "imp" (iterative magnitude pruning, hard masks).
    budget: fraction of the total cost the final model keeps, in (0, 1]. With the default
        cost (one per weight) it is the density of the masked weights.
    block: (R, C) block over a weight's first two dims; a conv block spans the whole kernel.
    allocation: "global" (one budget over all layers), "uniform" (same fraction per layer) or
        "erk" (RigL's Erdos-Renyi-Kernel densities, scaled to the budget, capped at 1), or
        "N:M" such as "2:4" (N of every M consecutive inputs of each weight row; the budget
        becomes N / M, blocks must be 1x1, costs do not shape the mask; see spartan.nm).
    beta_init, beta_final: inverse temperature of the soft mask, annealed from init to final
        until the finetune phase, and multiplied by sqrt(R * C).
    beta_scale: "mean" (default) makes beta dimensionless: each step the values v/c are
        divided by their cost-weighted mean sum(v) / sum(c), so beta = 20 means the soft mask
        goes from 27% to 73% over +-5% of the mean value, whatever the weights' scale (init,
        layer width, cost unit). "none" applies beta to raw v/c as the reference library does;
        there beta must grow as weights shrink (digits MLP at 95% sparsity needs 100-1000).
    warmup_frac: share of total_steps over which the kept fraction anneals from 1 to budget.
    finetune_frac: last share of total_steps with masks frozen; only kept weights train.
    schedule: shape of both anneals, "linear" or "cosine".
    prefixes: train only these module / parameter names (see layout.maskable_weights).
    structure: "weights" (weights or blocks of them are the items) or "channels" (whole
        output channels, hidden units and attention heads, coupled where widths must agree;
        see spartan.channels; needs example_inputs, global or uniform allocation, 1x1 block).
    min_keep: with "channels", the fraction of each layer group's items always kept (at
        least one). Default 0.1: deep enough for a 30%-of-dense latency budget on our models,
        while no layer becomes a one-channel bottleneck that training cannot recover from.
    """

    method: Method = "spartan"
    budget: float = 0.1
    block: tuple[int, int] = (1, 1)
    allocation: Allocation = "global"
    beta_init: float = 1.0
    beta_final: float = 20.0
    warmup_frac: float = 0.2
    finetune_frac: float = 0.2
    schedule: ScheduleKind = "linear"
    prefixes: tuple[str, ...] | None = None
    beta_scale: BetaScale = "mean"
    structure: str = "weights"
    min_keep: float = 0.1

    def __post_init__(self) -> None:
        _one_of("method", self.method, METHODS)
        nm = parse_nm(self.allocation)
        if nm is None:
            _one_of("allocation", self.allocation, ALLOCATIONS + ("N:M",))
        _one_of("schedule", self.schedule, SCHEDULES)
        _one_of("beta_scale", self.beta_scale, BETA_SCALES)
        budget = _number("budget", self.budget)
        if not 0.0 < budget <= 1.0:
            raise ValueError(f"budget must be in (0, 1], got {self.budget!r}")
        object.__setattr__(self, "block", check_block(self.block))
        if nm is not None:
            if self.block != (1, 1):
                raise ValueError(f"an N:M allocation needs block (1, 1), got {self.block}")
            object.__setattr__(self, "budget", nm[0] / nm[1])  # the pattern fixes the budget
        for name in ("beta_init", "beta_final"):
            if not _number(name, getattr(self, name)) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("warmup_frac", "finetune_frac"):
            if not 0.0 <= _number(name, getattr(self, name)) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        if self.warmup_frac + self.finetune_frac > 1.0 + 1e-12:
            raise ValueError(
                f"warmup_frac + finetune_frac must be <= 1, got "
                f"{self.warmup_frac} + {self.finetune_frac}"
            )
        _one_of("structure", self.structure, STRUCTURES)
        if not 0.0 <= _number("min_keep", self.min_keep) <= 1.0:
            raise ValueError(f"min_keep must be in [0, 1], got {self.min_keep!r}")
        if self.structure == "channels":
            if self.allocation not in ("global", "uniform"):
                raise ValueError("structure 'channels' takes allocation global or uniform, "
                                 f"got {self.allocation!r}")
            if self.block != (1, 1):
                raise ValueError(f"structure 'channels' has no blocks, got block {self.block}")
            if self.prefixes is not None:
                raise ValueError("structure 'channels' does not take prefixes")
        if self.prefixes is not None:
            prefixes = (self.prefixes,) if isinstance(self.prefixes, str) else tuple(self.prefixes)
            if not prefixes or not all(isinstance(p, str) and p for p in prefixes):
                raise ValueError(f"prefixes must be non-empty strings, got {self.prefixes!r}")
            object.__setattr__(self, "prefixes", prefixes)

    @property
    def nm(self) -> tuple[int, int] | None:
        """(N, M) under an N:M allocation, else None."""
        return parse_nm(self.allocation)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples as lists)."""
        d = dataclasses.asdict(self)
        d["block"] = list(self.block)
        d["prefixes"] = None if self.prefixes is None else list(self.prefixes)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SparsifierConfig:
        """Inverse of to_dict; unknown keys raise ValueError."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown SparsifierConfig fields: {unknown}")
        kwargs = dict(data)
        if "block" in kwargs:
            kwargs["block"] = tuple(kwargs["block"])
        if kwargs.get("prefixes") is not None:
            kwargs["prefixes"] = tuple(kwargs["prefixes"])
        return cls(**kwargs)


def _one_of(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)
