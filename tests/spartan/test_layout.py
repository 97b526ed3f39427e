"""Which weights are masked and how they are cut into blocks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spartan import block_grid, maskable_weights
from spartan.layout import block_numel, block_values, expand_blocks


class Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.conv = nn.Conv2d(4, 8, 3, groups=2)
        self.dw = nn.Conv2d(8, 8, 3, groups=8)
        self.attn = nn.MultiheadAttention(8, 2)
        self.xattn = nn.MultiheadAttention(8, 2, kdim=4, vdim=4)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        self.scale = nn.Parameter(torch.ones(3))


def test_default_weights_cover_linear_conv_and_attention() -> None:
    names = list(maskable_weights(Mixed()))
    assert names == [
        "conv.weight", "dw.weight",
        "attn.in_proj_weight", "attn.out_proj.weight",
        "xattn.q_proj_weight", "xattn.k_proj_weight", "xattn.v_proj_weight",
        "xattn.out_proj.weight",
        "head.0.weight", "head.2.weight",
    ]


def test_prefixes_select_modules_and_name_other_weights() -> None:
    model = Mixed()
    assert list(maskable_weights(model, ["head"])) == ["head.0.weight", "head.2.weight"]
    assert list(maskable_weights(model, ["attn", "emb.weight"])) == [
        "emb.weight", "attn.in_proj_weight", "attn.out_proj.weight"]
    assert list(maskable_weights(model, "head.2")) == ["head.2.weight"]
    # "attn" must not also match "xattn" or a longer name sharing the prefix.
    assert "xattn.q_proj_weight" not in maskable_weights(model, ["attn"])


@pytest.mark.parametrize("prefix, message", [
    ("nothere", "selects no maskable weight"),
    ("scale", "fewer than 2 dims"),
    ("norm", "selects no maskable weight"),
])
def test_bad_prefixes_raise(prefix: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        maskable_weights(Mixed(), [prefix])


def test_block_grid_divides_first_two_dims() -> None:
    assert block_grid((256, 64), (4, 4)) == (64, 16)
    assert block_grid((8, 2, 3, 3), (4, 2)) == (2, 1)  # conv: out x in-per-group
    assert block_grid((10, 64), (4, 4)) is None
    assert block_numel((8, 2, 3, 3), (4, 2)) == 4 * 2 * 9
    with pytest.raises(ValueError, match="2\\+ dims"):
        block_grid((16,), (1, 1))
    with pytest.raises(ValueError, match="positive ints"):
        block_grid((16, 16), (0, 4))


def test_block_values_and_expand_round_trip() -> None:
    w = torch.randn(8, 4, 3, 3)
    vals = block_values(w, (2, 2))
    assert vals.shape == (4, 2)
    assert torch.allclose(vals[1, 0], w[2:4, 0:2].abs().sum())
    mask = torch.tensor([[True, False], [False, True], [True, True], [False, False]])
    full = expand_blocks(mask, w.shape, (2, 2))
    assert full.shape == w.shape
    assert bool(full[4:6, 0:2].all()) and not bool(full[0:2, 2:4].any())
    assert int(full.sum()) == int(mask.sum()) * 2 * 2 * 9
    with pytest.raises(ValueError, match="block grid"):
        expand_blocks(mask[:2], w.shape, (2, 2))
