"""Soft and hard cost-weighted top-k (spartan.topk) against independent references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spartan import _chunked, _knapsack
from spartan.topk import (
    hard_threshold,
    hard_topk,
    soft_mask,
    soft_mask_from_tau,
    soft_topk,
    solve_threshold,
)

torch.set_num_threads(1)


def make(n: int, kind: str, seed: int = 0, dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, generator=g, dtype=torch.float64).abs().to(dtype)
    if kind == "unit":
        return v, None, float(n)
    if kind == "uniform":
        c = torch.rand(n, generator=g, dtype=torch.float64) * 2 + 0.1
    else:  # lognormal
        c = torch.randn(n, generator=g, dtype=torch.float64).exp()
    c = c.to(dtype if dtype == torch.float64 else torch.float32)
    return v, c, float(c.double().sum())


def spread(v: torch.Tensor, c: torch.Tensor | None) -> float:
    r = (v.double() if c is None else v.double() / c.double())
    return float(r.max() - r.min()) or 1.0


def spent(m: torch.Tensor, c: torch.Tensor | None) -> float:
    return float(m.double().sum() if c is None else (m.double() * c.double()).sum())


def sorted_hard(v: torch.Tensor, c: torch.Tensor | None, budget: float) -> torch.Tensor:
    """Reference: numpy sort by (ratio desc, index asc), keep the prefix that fits."""
    work = torch.float64 if v.dtype == torch.float64 else torch.float32
    ratio = (v.to(work) if c is None else v.to(work) / c.to(work)).numpy()
    cost = np.ones(len(ratio)) if c is None else c.double().numpy()
    order = np.lexsort((np.arange(len(ratio)), -ratio.astype(np.float64)))
    keep = np.zeros(len(ratio), dtype=bool)
    keep[order[np.cumsum(cost[order]) <= budget]] = True
    return torch.from_numpy(keep)


@pytest.mark.parametrize("n", [1, 7, 1000, 40_000])
@pytest.mark.parametrize("kind", ["unit", "uniform", "lognormal"])
@pytest.mark.parametrize("frac", [0.01, 0.3, 0.99])
@pytest.mark.parametrize("beta_rel", [1.0, 100.0, 1e4])
def test_soft_budget_met(n: int, kind: str, frac: float, beta_rel: float) -> None:
    v, c, total = make(n, kind, seed=n)
    m = soft_topk(v, c, frac * total, beta_rel / spread(v, c))
    assert m.dtype == torch.float32 and m.shape == v.shape
    assert float(m.min()) >= 0 and float(m.max()) <= 1
    assert abs(spent(m, c) - frac * total) <= 1e-4 * frac * total


@pytest.mark.parametrize("kind", ["unit", "lognormal"])
def test_float64_is_tighter(kind: str) -> None:
    v, c, total = make(70_000, kind, dtype=torch.float64)
    for frac, beta_rel in [(0.02, 3.0), (0.5, 300.0), (0.97, 3e4)]:
        m = soft_topk(v, c, frac * total, beta_rel / spread(v, c))
        assert m.dtype == torch.float64
        assert abs(spent(m, c) - frac * total) <= 1e-9 * frac * total
        assert torch.equal(hard_topk(v, c, frac * total), sorted_hard(v, c, frac * total))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_computed_in_float32(dtype: torch.dtype) -> None:
    v, c, total = make(3000, "lognormal")
    vh = v.to(dtype)
    m = soft_topk(vh, c, 0.2 * total, 50.0)
    assert m.dtype == dtype
    assert torch.equal(m, soft_topk(vh.float(), c, 0.2 * total, 50.0).to(dtype))
    assert abs(spent(m, c) - 0.2 * total) <= 1e-2 * 0.2 * total
    assert torch.equal(hard_topk(vh, c, 0.2 * total), hard_topk(vh.float(), c, 0.2 * total))


def test_large_offset_not_limited_by_float32_grid() -> None:
    # ratios 1000 + [0, 1): one float32 step of tau moves every logit by ~0.6 at this beta
    v = 1000.0 + torch.rand(20_000, generator=torch.Generator().manual_seed(1))
    m = soft_topk(v, None, 200.0, 1e4)
    assert abs(spent(m, None) - 200.0) <= 1e-4 * 200.0
    tau = solve_threshold(v, None, 200.0, 1e4)
    out = torch.empty_like(v)
    assert soft_mask(v, None, tau, 1e4, out=out) is out
    assert abs(spent(out, None) - 200.0) <= 1e-4 * 200.0


def test_chunked_passes_match_single_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    v, c, total = make(50_000, "lognormal", seed=3)
    v[100:20_000:7] = v[5]  # ties across chunks
    ref_soft, ref_hard = soft_topk(v, c, 0.4 * total, 30.0), hard_topk(v, c, 0.4 * total)
    monkeypatch.setattr(_chunked, "CHUNK", 4096)
    assert torch.allclose(soft_topk(v, c, 0.4 * total, 30.0), ref_soft, atol=1e-6)
    assert torch.equal(hard_topk(v, c, 0.4 * total), ref_hard)
    assert torch.equal(ref_hard, sorted_hard(v, c, 0.4 * total))


def sinkhorn_mask(v: torch.Tensor, c: torch.Tensor, k: float, beta: float) -> torch.Tensor:
    """Plain log-domain Sinkhorn for the entropic OT of items (mass c_i) onto two bins, keep
    (capacity k, cost -v_i / c_i per unit mass) and drop (capacity sum(c) - k, cost 0), with
    regularisation 1 / beta, iterated to a fixed point. Returns plan[:, keep] / c."""
    z, logc = beta * v / c, c.log()
    caps = [math.log(k), math.log(float(c.sum()) - k)]
    gk = gd = 0.0
    for _ in range(200_000):
        f = logc - torch.logaddexp(z + gk, torch.full_like(z, gd))
        nk = caps[0] - float(torch.logsumexp(f + z, 0))
        nd = caps[1] - float(torch.logsumexp(f, 0))
        done = abs(nk - gk) + abs(nd - gd) < 1e-14
        gk, gd = nk, nd
        if done:
            break
    else:
        raise AssertionError("Sinkhorn did not converge")
    f = logc - torch.logaddexp(z + gk, torch.full_like(z, gd))
    return (f + z + gk).exp() / c


@pytest.mark.parametrize("kind", ["unit", "uniform", "lognormal"])
@pytest.mark.parametrize("frac,beta_rel", [(0.1, 1.0), (0.5, 10.0), (0.9, 50.0)])
def test_agrees_with_sinkhorn(kind: str, frac: float, beta_rel: float) -> None:
    v, c, total = make(300, kind, seed=7, dtype=torch.float64)
    cc = torch.ones_like(v) if c is None else c
    beta = beta_rel / spread(v, c)
    ref = sinkhorn_mask(v, cc, frac * total, beta)
    assert torch.allclose(soft_topk(v, c, frac * total, beta), ref, atol=1e-8, rtol=0)


@pytest.mark.parametrize("kind", ["unit", "lognormal"])
def test_gradcheck_float64(kind: str) -> None:
    v, c, total = make(12, kind, seed=11, dtype=torch.float64)
    v.requires_grad_(True)
    beta = 20.0 / spread(v.detach(), c)
    assert torch.autograd.gradcheck(lambda x: soft_topk(x, c, 0.4 * total, beta), (v,))


@pytest.mark.parametrize("kind", ["unit", "uniform"])
def test_gradient_is_the_design_formula(kind: str) -> None:
    v, c, total = make(500, kind, seed=5, dtype=torch.float64)
    cc = torch.ones_like(v) if c is None else c
    v.requires_grad_(True)
    beta, g = 40.0, torch.randn(500, dtype=torch.float64)
    m = soft_topk(v, c, 0.25 * total, beta)
    (got,) = torch.autograd.grad(m, v, g)
    m = m.detach()
    w = m * (1 - m)
    want = beta * w * (g / cc - (g * w).sum() / (cc * w).sum())
    assert torch.allclose(got, want, rtol=1e-10, atol=1e-12)
    tau = solve_threshold(v.detach(), c, 0.25 * total, beta)
    m2 = soft_mask_from_tau(v, c, tau, beta)
    assert torch.allclose(m2, m, atol=1e-10)
    assert torch.allclose(torch.autograd.grad(m2, v, g)[0], want, rtol=1e-8, atol=1e-12)


def test_warm_start_and_mask_from_tau() -> None:
    v, c, total = make(30_000, "uniform", seed=2)
    beta = 200.0 / spread(v, c)
    tau = solve_threshold(v, c, 0.1 * total, beta)
    v2 = v * (1 + 0.01 * torch.randn(v.shape, generator=torch.Generator().manual_seed(4)))
    warm = solve_threshold(v2, c, 0.1 * total, beta, tau_init=tau)
    cold = solve_threshold(v2, c, 0.1 * total, beta)
    for t in (tau, warm, cold):
        m = soft_mask_from_tau(v2 if t != tau else v, c, t, beta)
        assert abs(spent(m, c) - 0.1 * total) <= 1e-4 * 0.1 * total
    assert abs(warm - cold) <= 1e-3 * abs(cold)


def test_under_autocast_same_result() -> None:
    v, c, total = make(2000, "lognormal")
    ref = soft_topk(v, c, 0.3 * total, 25.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = soft_topk(v, c, 0.3 * total, 25.0)
    assert got.dtype == torch.float32 and torch.equal(got, ref)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    v, c, total = make(100_000, "lognormal")
    m = soft_topk(v.cuda(), c.cuda(), 0.2 * total, 30.0)
    h = hard_topk(v.cuda(), c.cuda(), 0.2 * total)
    assert m.device.type == "cuda" and h.device.type == "cuda"
    assert abs(spent(m.cpu(), c) - 0.2 * total) <= 1e-4 * 0.2 * total
    assert torch.equal(h.cpu(), hard_topk(v, c, 0.2 * total))


@pytest.mark.parametrize("n", [1, 5, 2000, 70_000])
@pytest.mark.parametrize("kind", ["unit", "uniform", "lognormal"])
@pytest.mark.parametrize("frac", [0.003, 0.37, 0.99])
def test_hard_equals_sort_and_fits(n: int, kind: str, frac: float) -> None:
    v, c, total = make(n, kind, seed=n + 1)
    keep = hard_topk(v, c, frac * total)
    assert keep.dtype == torch.bool
    assert torch.equal(keep, sorted_hard(v, c, frac * total))
    assert spent(keep, c) <= frac * total


def test_hard_budget_just_short_of_an_item() -> None:
    v = torch.rand(100_000, generator=torch.Generator().manual_seed(3))
    assert int(hard_topk(v, None, 3.0 - 5e-10).sum()) == 2
    assert int(hard_topk(v, None, 70_000.0 - 1e-9).sum()) == 69_999
    c = torch.full((100_000,), 0.5)
    assert int(hard_topk(v, c, 1.5 - 1e-9).sum()) == 2
    assert int(hard_topk(v, c, 1.5).sum()) == 3


@pytest.mark.parametrize("kind", ["unit", "lognormal"])
def test_hard_ties_lower_index_first(kind: str) -> None:
    g = torch.Generator().manual_seed(9)
    v = torch.randint(0, 6, (60_000,), generator=g).float()  # heavy ties
    c = None if kind == "unit" else torch.randint(1, 4, (60_000,), generator=g).float()
    total = 60_000.0 if c is None else float(c.sum())
    for budget in (0.1 * total, 0.5 * total, 0.77 * total, 30_001.0, 30_002.0, 30_003.0):
        keep = hard_threshold(v, c, budget)
        assert torch.equal(keep, sorted_hard(v, c, budget))
        assert torch.equal(keep, hard_threshold(v, c, budget))


def test_hard_never_sorts_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    sizes: list[int] = []
    original = _knapsack.sorted_cut

    def spy(x, c, budget):  # type: ignore[no-untyped-def]
        sizes.append(x.numel())
        return original(x, c, budget)

    monkeypatch.setattr(_knapsack, "sorted_cut", spy)
    for kind in ("unit", "lognormal"):
        v, c, total = make(300_000, kind, seed=12)
        for frac in (0.01, 0.5, 0.99):
            assert torch.equal(hard_topk(v, c, frac * total), sorted_hard(v, c, frac * total))
    assert sizes and max(sizes) <= _knapsack.SORT_MAX


@pytest.mark.parametrize("kind", ["unit", "lognormal"])
def test_hard_bracket_miss_falls_back(monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    sizes: list[int] = []
    original = _knapsack.sorted_cut

    def spy(x, c, budget):  # type: ignore[no-untyped-def]
        sizes.append(x.numel())
        return original(x, c, budget)

    monkeypatch.setattr(_knapsack, "sorted_cut", spy)
    monkeypatch.setattr(_knapsack, "SAMPLE", 2)  # brackets from 2 samples miss
    v, c, total = make(100_000, kind, seed=8)
    assert torch.equal(hard_topk(v, c, 0.5 * total), sorted_hard(v, c, 0.5 * total))
    assert 100_000 in sizes


def test_costs_changed_in_place_are_checked_again() -> None:
    v, c, total = make(100_000, "lognormal", seed=13)
    assert c is not None
    hard_topk(v, c, 0.3 * total), soft_topk(v, c, 0.3 * total, 10.0)  # checks remembered
    c[: 50_000].mul_(3.0)
    total = float(c.double().sum())
    assert torch.equal(hard_topk(v, c, 0.3 * total), sorted_hard(v, c, 0.3 * total))
    assert abs(spent(soft_topk(v, c, 0.3 * total, 10.0), c) - 0.3 * total) <= 1e-4 * 0.3 * total
    c[7] = -1.0
    with pytest.raises(ValueError):
        hard_topk(v, c, 0.3 * total)


def nan_at(i: int, x: float) -> torch.Tensor:
    v = torch.rand(10)
    v[i] = x
    return v


@pytest.mark.parametrize("call", [
    lambda: soft_topk(torch.rand(10), None, 0.0, 1.0),
    lambda: soft_topk(torch.rand(10), None, 10.0, 1.0),
    lambda: soft_topk(torch.rand(10), torch.full((10,), 2.0), 20.0, 1.0),
    lambda: soft_topk(torch.rand(10), None, float("nan"), 1.0),
    lambda: soft_topk(nan_at(3, float("nan")), None, 5.0, 1.0),
    lambda: soft_topk(nan_at(0, float("inf")), None, 5.0, 1.0),
    lambda: soft_topk(torch.rand(10), torch.zeros(10), 0.5, 1.0),
    lambda: soft_topk(torch.rand(10), -torch.ones(10), 0.5, 1.0),
    lambda: soft_topk(torch.rand(10), nan_at(2, float("nan")), 0.5, 1.0),
    lambda: soft_topk(torch.rand(10), torch.ones(9), 5.0, 1.0),
    lambda: soft_topk(torch.rand(2, 5), None, 5.0, 1.0),
    lambda: soft_topk(torch.rand(0), None, 0.5, 1.0),
    lambda: soft_topk(torch.arange(10), None, 5.0, 1.0),
    lambda: soft_topk(torch.rand(10), None, 5.0, 0.0),
    lambda: soft_topk(torch.rand(10), None, 5.0, -2.0),
    lambda: soft_topk(torch.rand(10), None, 5.0, float("nan")),
    lambda: hard_topk(torch.rand(10), None, 10.0),
    lambda: hard_topk(torch.rand(10), None, -1.0),
    lambda: hard_topk(nan_at(4, float("nan")), None, 5.0),
    lambda: hard_topk(torch.rand(10), torch.ones(10, 1), 5.0),
    lambda: hard_topk(torch.rand(10), torch.zeros(10), 5.0),
    lambda: solve_threshold(torch.rand(10), None, 5.0, 0.0),
    lambda: solve_threshold(nan_at(1, float("-inf")), None, 5.0, 1.0),
    lambda: soft_mask_from_tau(torch.rand(10), None, float("nan"), 1.0),
    lambda: soft_mask_from_tau(torch.rand(10), None, 0.5, 0.0),
    lambda: soft_mask_from_tau(torch.rand(10), torch.ones(3), 0.5, 1.0),
    lambda: soft_mask(torch.rand(10), None, float("inf"), 1.0),
    lambda: soft_mask(torch.rand(10), None, 0.5, 1.0, out=torch.empty(9)),
    lambda: soft_mask(torch.rand(10), None, 0.5, 1.0, out=torch.empty(10, dtype=torch.float64)),
])
def test_bad_input_raises_value_error(call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        call()
