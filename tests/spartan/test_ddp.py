"""The Sparsifier under DistributedDataParallel: 2 gloo ranks, masks bit-identical every step.

The ranks run with different thread counts (1 and 2), so their sums are taken in different
orders; initial weights differ too (DDP broadcasts rank 0's when it wraps the model). Each
rank's own mask decision can then differ from rank 0's in the last bits; the Sparsifier's
per-step broadcast must make the masks, forward weights and dense weights identical anyway.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from spartan import Sparsifier, SparsifierConfig
from tests.spartan import ddp_ranks

CASES: list[dict[str, Any]] = [
    {"method": "spartan"},
    {"method": "dual_averaging"},
    {"method": "imp"},
    {"method": "spartan", "block": (4, 4), "allocation": "erk"},
    {"method": "spartan", "allocation": "2:4"},
    {"method": "spartan", "structure": "channels"},
    {"method": "dual_averaging", "structure": "channels"},
    {"method": "imp", "structure": "channels"},
]


def run_ranks(tmp_path: Path, cases: list[dict[str, Any]], world: int = 2,
              threads: tuple[int, ...] = (1, 2), resume_at: int | None = None,
              fsdp: bool = False) -> list[list[dict[str, Any]]]:
    mp.spawn(ddp_ranks.main, nprocs=world, join=True,
             args=(world, str(tmp_path / "rdzv"), str(tmp_path), cases, list(threads),
                   resume_at, fsdp))
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> list[list[dict[str, Any]]]:
    """Every case on 2 ranks, and the FSDP checks (one spawn for all: starting ranks is slow)."""
    return run_ranks(tmp_path_factory.mktemp("ddp"), CASES, fsdp=True)


@pytest.mark.slow
def test_masks_identical_on_every_rank_at_every_step(
        straight: list[list[dict[str, Any]]]) -> None:
    for case, *per_rank in zip(CASES, *[r[:len(CASES)] for r in straight], strict=True):
        for r in per_rank:
            assert r["bad_steps"] == [], case
            assert r["step"] == ddp_ranks.STEPS
        assert per_rank[0]["adopted"] == 0  # rank 0 always keeps its own
        assert per_rank[0]["fingerprint"] == per_rank[1]["fingerprint"]
        budget = 0.5 if case.get("allocation") == "2:4" else 0.1
        if case.get("structure") == "channels":  # the min_keep floors keep a little more
            assert 0.05 <= per_rank[0]["density"] <= 0.15
        else:
            assert per_rank[0]["density"] == pytest.approx(budget, abs=0.02)
    # With 1 and 2 threads the ranks' sums differ in order, and so do their own soft-mask
    # thresholds: rank 1 took rank 0's decision at most warmup steps.
    assert straight[1][0]["adopted"] > 0


@pytest.mark.slow
def test_fsdp_is_refused(straight: list[list[dict[str, Any]]]) -> None:
    """fully_shard before attaching, or after: both refused on every rank, not trained wrong."""
    for per_rank in straight:
        fsdp = per_rank[len(CASES)]
        assert "wrapped in FSDP" in fsdp["sharded_then_attached"]
        assert "was replaced after the Sparsifier was attached" in fsdp["attached_then_sharded"]


@pytest.mark.slow
def test_state_saved_on_rank_0_resumes_on_every_rank(
        tmp_path: Path, straight: list[list[dict[str, Any]]]) -> None:
    """Rank 0 alone loads the checkpoint taken mid-warmup; `broadcast` gives every rank its
    masks, and the run finishes as the uninterrupted one does, bit for bit."""
    picked = [0, 2]  # spartan (fused path), imp (torch path, masks sent)
    resumed = run_ranks(tmp_path, [CASES[i] for i in picked], resume_at=4)
    for i, r in zip(picked, resumed[0], strict=True):
        assert r["bad_steps"] == []
        assert r["fingerprint"] == straight[0][i]["fingerprint"]


def test_process_group_without_init_is_refused() -> None:
    assert not dist.is_initialized()
    with pytest.raises(ValueError, match="not initialised"):
        Sparsifier(nn.Linear(4, 4), SparsifierConfig(), total_steps=10,
                   process_group=object())  # type: ignore[arg-type]


def test_single_process_unchanged() -> None:
    """Without torch.distributed nothing is exchanged: adopted stays 0."""
    model = nn.Linear(8, 8)
    sp = Sparsifier(model, SparsifierConfig(warmup_frac=0.0), total_steps=4)
    sp.step()
    assert sp.adopted == 0
    assert torch.count_nonzero(sp.masks()["weight"]) <= 7
