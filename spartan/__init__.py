"""Spartan: sparse training with cost-weighted soft top-k masks."""

from spartan.topk import hard_topk, soft_topk

__all__ = ["hard_topk", "soft_topk"]
