"""Spartan: sparse training with cost-weighted soft top-k masks."""

from spartan.config import SparsifierConfig
from spartan.export import SparseModel, to_sparse
from spartan.layout import block_grid, maskable_weights
from spartan.report import LayerReport, SparsityReport
from spartan.shrink import shrink
from spartan.sparse_io import load_sparse, save_shrunk, save_sparse
from spartan.sparsifier import Sparsifier
from spartan.topk import hard_topk, soft_topk

__all__ = [
    "LayerReport",
    "SparseModel",
    "Sparsifier",
    "SparsifierConfig",
    "SparsityReport",
    "block_grid",
    "hard_topk",
    "load_sparse",
    "maskable_weights",
    "save_shrunk",
    "save_sparse",
    "shrink",
    "soft_topk",
    "to_sparse",
]
