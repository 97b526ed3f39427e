"""Masks of a Sparsifier: whole blocks, allocation across layers, costs, and exact gradients."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from spartan import Sparsifier, SparsifierConfig, hard_topk, soft_topk
from spartan.allocation import erk_fractions
from spartan.build import Costs
from spartan.config import Method
from spartan.layout import blocked

torch.set_num_threads(1)


class BlockNet(nn.Module):
    """Linear, grouped conv, depthwise conv and attention in one forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 16, 3, groups=2)  # weight (16, 4, 3, 3)
        self.dw = nn.Conv2d(16, 16, 3, groups=16)  # weight (16, 1, 3, 3)
        self.attn = nn.MultiheadAttention(16, 2)  # in_proj (48, 16), out_proj (16, 16)
        self.fc = nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dw(torch.relu(self.conv(x)))  # (B, 16, 2, 2)
        seq = h.flatten(2).permute(2, 0, 1)  # (4, B, 16)
        a, _ = self.attn(seq, seq, seq)
        return self.fc(a.mean(0))


def run(model: nn.Module, cfg: SparsifierConfig, steps: int = 6,
        costs: Costs = None) -> Sparsifier:
    sp = Sparsifier(model, cfg, total_steps=steps, costs=costs)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.randn(4, 8, 6, 6, generator=gen) if isinstance(model, BlockNet) else \
            torch.randn(8, 32, generator=gen)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sp.step()
    return sp


def assert_whole_blocks(mask: torch.Tensor, block: tuple[int, int]) -> None:
    b = blocked(mask.float(), block)
    assert torch.equal(b.amin(dim=(1, 3, 4)), b.amax(dim=(1, 3, 4)))


@pytest.mark.parametrize("method", ["spartan", "dual_averaging", "imp"])
def test_block_masks_keep_whole_blocks(method: Method) -> None:
    torch.manual_seed(0)
    model = BlockNet()
    sp = run(model, SparsifierConfig(method=method, budget=0.3, block=(4, 4), warmup_frac=0.5))
    masks = sp.masks()
    assert set(masks) == {"conv.weight", "dw.weight", "attn.in_proj_weight",
                          "attn.out_proj.weight", "fc.weight"}
    report = sp.finalize()
    assert report.fallbacks == ["dw.weight"]  # 1 input channel per group: 4x4 does not divide
    for name, mask in masks.items():
        block = (1, 1) if name == "dw.weight" else (4, 4)
        assert_whole_blocks(mask, block)
        w = model.get_parameter(name)
        assert bool((w[~mask] == 0).all())
    assert report.kept_cost_fraction == pytest.approx(0.3, abs=16 * 9 / report.cost)


def test_depthwise_conv_blocks_over_output_channels() -> None:
    torch.manual_seed(0)
    model = BlockNet()
    sp = run(model, SparsifierConfig(budget=0.5, block=(4, 1), allocation="uniform",
                                     warmup_frac=0.5))
    mask = sp.masks()["dw.weight"]
    assert sp.report().fallbacks == []
    assert_whole_blocks(mask, (4, 1))
    assert 0 < int(mask.sum()) < mask.numel()


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                         nn.Linear(64, 4))


def test_uniform_keeps_the_same_fraction_in_every_layer() -> None:
    sp = run(mlp(), SparsifierConfig(budget=0.2, allocation="uniform", warmup_frac=0.0))
    for row in sp.report().layers:
        assert row.kept_weights == math.floor(0.2 * row.weights)


def test_erk_keeps_the_erk_fraction_of_each_layer() -> None:
    sp = run(mlp(), SparsifierConfig(budget=0.2, allocation="erk", warmup_frac=0.0))
    rows = sp.report().layers
    fr = erk_fractions(0.2, [r.shape for r in rows], [r.weights for r in rows])
    assert fr[2] == 1.0  # small output layer is kept dense
    for row, f in zip(rows, fr, strict=True):
        assert row.kept_weights == math.floor(f * row.weights + 1e-9)


def test_global_keeps_the_largest_weights_over_all_layers() -> None:
    model = mlp()
    sp = Sparsifier(model, SparsifierConfig(method="dual_averaging", budget=0.2,
                                            warmup_frac=0.0), total_steps=10)
    v = torch.cat([w.detach().abs().reshape(-1) for w in sp.weights.values()])
    expect = hard_topk(v, None, 0.2 * v.numel())
    got = torch.cat([m.reshape(-1) for m in sp.masks().values()])
    assert torch.equal(got, expect)


def test_cheaper_layers_keep_more() -> None:
    costs: dict[str, torch.Tensor | float] = {
        "0.weight": 1.0, "2.weight": 10.0, "4.weight": torch.full((4, 64), 1.0)}
    sp = run(mlp(), SparsifierConfig(budget=0.2, warmup_frac=0.0), costs=costs)
    rows = {r.name: r for r in sp.report().layers}
    assert rows["0.weight"].kept_fraction > 2 * rows["2.weight"].kept_fraction
    assert sp.report().kept_cost_fraction <= 0.2
    assert sp.report().kept_cost_fraction == pytest.approx(0.2, rel=1e-2)

    def by_layer(name: str, param: nn.Parameter, grid: tuple[int, int]) -> torch.Tensor:
        return torch.full(grid, 10.0 if name == "2.weight" else 1.0)

    sp2 = run(mlp(), SparsifierConfig(budget=0.2, warmup_frac=0.0), costs=by_layer)
    assert {r.name: r.kept_blocks for r in sp2.report().layers} == {
        r.name: r.kept_blocks for r in sp.report().layers}


@pytest.mark.parametrize("costs, message", [
    ({"0.weight": 1.0}, "missing"),
    ({"0.weight": 1.0, "2.weight": 1.0, "4.weight": 1.0, "9.weight": 1.0}, "unknown"),
    ({"0.weight": torch.ones(3), "2.weight": 1.0, "4.weight": 1.0}, "expected block grid"),
    ({"0.weight": -1.0, "2.weight": 1.0, "4.weight": 1.0}, "finite and > 0"),
])
def test_bad_costs_raise(costs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Sparsifier(mlp(), SparsifierConfig(), total_steps=5, costs=costs)


@pytest.mark.parametrize("block, lognormal", [((1, 1), False), ((2, 2), False), ((1, 1), True)])
def test_gradient_matches_the_implicit_soft_topk_gradient(
        block: tuple[int, int], lognormal: bool) -> None:
    """dL/dw equals autograd through |w| -> block sums -> soft_topk -> w * m (hard part as
    identity) in float64: the Sparsifier's fused backward is the gradient of DESIGN.md."""
    torch.manual_seed(0)
    lin, conv = nn.Linear(8, 12).double(), nn.Conv2d(2, 4, 3).double()
    model = nn.ModuleDict({"lin": lin, "conv": conv})
    names = ["lin.weight", "conv.weight"]
    grids = {"lin.weight": (12 // block[0], 8 // block[1]),
             "conv.weight": (4 // block[0], 2 // block[1])}
    gen = torch.Generator().manual_seed(1)
    costs = {n: (torch.randn(g, generator=gen).exp() if lognormal else
                 torch.full(g, float(block[0] * block[1] * (9 if n == "conv.weight" else 1))))
             for n, g in grids.items()}
    cfg = SparsifierConfig(budget=0.3, block=block, beta_init=5.0, beta_final=5.0,
                           warmup_frac=0.0, finetune_frac=0.0)
    sp = Sparsifier(model, cfg, total_steps=10, costs=costs)
    x, xc = torch.randn(5, 8, dtype=torch.float64), torch.randn(3, 2, 6, 6, dtype=torch.float64)

    def loss(wl: torch.Tensor, wc: torch.Tensor) -> torch.Tensor:
        return (nn.functional.linear(x, wl) ** 2).sum() + nn.functional.conv2d(xc, wc).sin().sum()

    loss(lin.weight, conv.weight).backward()
    ours = [sp.weights[n].grad for n in names]
    masks = sp.masks(expand=False)

    ws = [sp.weights[n].detach().clone().requires_grad_() for n in names]
    v = torch.cat([blocked(w, block).abs().sum(dim=(1, 3, 4)).reshape(-1) for w in ws])
    c = torch.cat([costs[n].reshape(-1) for n in names]).double()
    # beta is dimensionless: scaled by the cost-weighted mean of v / c (beta_scale="mean").
    beta = 5.0 * math.sqrt(block[0] * block[1]) / (float(v.detach().sum()) / float(c.sum()))
    m = soft_topk(v, c, 0.3 * float(c.sum()), beta)
    h = torch.cat([masks[n].reshape(-1) for n in names]).double()
    effs, start = [], 0
    for w, n in zip(ws, names, strict=True):
        g = grids[n]
        sl = slice(start, start + g[0] * g[1])
        start = sl.stop
        mb = m[sl].view(g[0], 1, g[1], 1, 1)
        wm = blocked(w, block) * mb
        hb = h[sl].view(g[0], 1, g[1], 1, 1)
        effs.append((wm + (wm * hb - wm).detach()).reshape(w.shape))
    loss(*effs).backward()
    for ref, got in zip(ws, ours, strict=True):
        assert got is not None and ref.grad is not None
        torch.testing.assert_close(got, ref.grad, rtol=1e-6, atol=1e-8)
