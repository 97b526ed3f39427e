"""N:M allocation: exactly N of every M, soft top-k per group, Sparsifier contract kept."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spartan import Sparsifier, SparsifierConfig, to_sparse
from spartan.kernels import is_n_m
from spartan.nm import nm_hard, nm_threshold, parse_nm


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)


def _train(method: str, allocation: str = "2:4", steps: int = 12) -> tuple[nn.Module, Sparsifier]:
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    cfg = SparsifierConfig(method=method, allocation=allocation, warmup_frac=0.5,
                           finetune_frac=0.25)
    sp = Sparsifier(net, cfg, steps)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    for _ in range(steps):
        loss = net(torch.randn(8, 16)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        for p in net.parameters():
            assert p.grad is not None and bool(torch.isfinite(p.grad).all())
        opt.step()
        sp.step()
    return net, sp


@pytest.mark.parametrize("method", ["spartan", "dual_averaging", "imp"])
@pytest.mark.parametrize("allocation", ["2:4", "1:4", "4:8"])
def test_exactly_n_of_m_after_finalize(method: str, allocation: str) -> None:
    n, m = parse_nm(allocation)  # type: ignore[misc]
    net, sp = _train(method, allocation)
    masks = sp.masks()
    report = sp.finalize()
    assert report.allocation == allocation and report.budget == pytest.approx(n / m)
    assert report.density == pytest.approx(n / m)
    for layer in (net[0], net[2]):
        w = layer.weight
        nonzero = (w != 0).reshape(-1, m).sum(-1)
        assert bool((nonzero == n).all())
    assert set(masks) == {"0.weight", "2.weight"}
    assert all(bool((mk.reshape(-1, m).sum(-1) == n).all()) for mk in masks.values())


def test_soft_mask_meets_the_per_group_budget() -> None:
    values = torch.rand(1000, 4)
    for k in (2.0, 3.2, 0.5):
        tau = nm_threshold(values.reshape(-1), 4, k, beta=30.0)
        m = torch.sigmoid(30.0 * (values - tau[:, None]))
        torch.testing.assert_close(m.sum(-1), torch.full((1000,), k), rtol=1e-4, atol=0)
    with pytest.raises(ValueError, match="per-group budget"):
        nm_threshold(values.reshape(-1), 4, 4.0, beta=1.0)


def test_hard_mask_keeps_the_largest_of_each_group() -> None:
    v = torch.tensor([0.1, 0.9, 0.5, 0.3, 4.0, 3.0, 2.0, 1.0])
    assert nm_hard(v, 4, 2).tolist() == [False, True, True, False, True, True, False, False]
    prev = torch.tensor([True, False, True, True] * 2)  # IMP: pruned items stay pruned
    assert nm_hard(v, 4, 2, prev).tolist() == [False, False, True, True, True, False, True, False]


def test_spartan_soft_state_has_one_tau_per_group() -> None:
    _, sp = _train("spartan", steps=12)
    state = sp.state_dict()
    taus = [g["tau"] for g in state["groups"]]
    assert [t.numel() for t in taus] == [32 * 16 // 4, 8 * 32 // 4]


def test_nm_config_rules() -> None:
    cfg = SparsifierConfig(allocation="2:4")
    assert cfg.nm == (2, 4) and cfg.budget == 0.5
    assert SparsifierConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="block"):
        SparsifierConfig(allocation="2:4", block=(4, 4))
    with pytest.raises(ValueError, match="0 < N < M"):
        SparsifierConfig(allocation="4:4")
    with pytest.raises(ValueError, match="allocation"):
        SparsifierConfig(allocation="two:four")


def test_rows_that_do_not_split_fall_back() -> None:
    net = nn.Sequential(nn.Linear(6, 8))
    sp = Sparsifier(net, SparsifierConfig(allocation="2:4", warmup_frac=0.0), 2)
    rep = sp.finalize()
    assert rep.layers[0].fallback and rep.layers[0].kept_weights == 24


def test_two_four_model_exports_with_same_outputs() -> None:
    net, sp = _train("spartan")
    sp.finalize()
    assert is_n_m(net[0].weight.detach())
    x = torch.randn(4, 16)
    sparse = to_sparse(net, "csr")
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), net(x), rtol=1e-4, atol=1e-5)
