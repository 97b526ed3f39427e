"""Spartan: sparse training with cost-weighted soft top-k masks."""

from spartan.config import SparsifierConfig
from spartan.layout import block_grid, maskable_weights
from spartan.report import LayerReport, SparsityReport
from spartan.sparsifier import Sparsifier
from spartan.topk import hard_topk, soft_topk

__all__ = [
    "LayerReport",
    "Sparsifier",
    "SparsifierConfig",
    "SparsityReport",
    "block_grid",
    "hard_topk",
    "maskable_weights",
    "soft_topk",
]
