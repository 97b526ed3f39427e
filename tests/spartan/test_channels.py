"""structure="channels": coupled items, floors, budgets, methods, resume, exact zeros."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from spartan import Sparsifier, SparsifierConfig
from spartan.channel_costs import builtin_costs, item_costs, total_cost
from spartan.channel_sparsifier import ChannelSparsifier
from spartan.channels import trace_channels
from spartan_service.zoo import build_model
from tests.spartan.channel_models import ConcatNet, GroupedNet, TinyDecoder, Untraceable


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)  # 2 shared cores: more threads only contend


def resnet() -> nn.Module:
    return build_model("resnet", {"width": 4, "depth": 8}, (3, 8, 8), 5)


def vit() -> nn.Module:
    return build_model("vit", {"dim": 16, "depth": 1, "heads": 4, "mlp_ratio": 2, "patch": 4},
                       (1, 8, 8), 5)


def mlp() -> nn.Module:
    return build_model("mlp", {"hidden": [32, 24]}, (12,), 4)


def train(model: nn.Module, x: Tensor, cfg: SparsifierConfig, steps: int,
          costs: dict | None = None) -> Sparsifier:
    s = Sparsifier(model, cfg, steps, costs=costs, example_inputs=x)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(steps):
        loss = model(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        s.step()
    return s


def cfg(**kw: object) -> SparsifierConfig:
    base = {"structure": "channels", "budget": 0.4, "warmup_frac": 0.5, "finetune_frac": 0.25,
            "min_keep": 0.1}
    return SparsifierConfig(**(base | kw))  # type: ignore[arg-type]


def test_sparsifier_makes_the_channel_variant() -> None:
    model = mlp()
    s = Sparsifier(model, cfg(), 4, example_inputs=torch.randn(2, 12))
    assert isinstance(s, ChannelSparsifier) and isinstance(s, Sparsifier)


def test_residual_stream_is_one_item_per_channel() -> None:
    model = resnet()
    g = trace_channels(model, torch.randn(2, 3, 8, 8))
    stem = g.layers["stem"].out_items
    assert bool((stem >= 0).all())
    # stage 1: the stem, every block's conv2 and block inputs are one stream
    assert torch.equal(g.layers["stages.0.0.conv2"].out_items, stem)
    assert torch.equal(g.layers["stages.0.0.conv1"].in_items, stem)
    # stage 2: the projection shortcut joins conv2's outputs
    assert torch.equal(g.layers["stages.1.0.shortcut.0"].out_items,
                       g.layers["stages.1.0.conv2"].out_items)
    assert torch.equal(g.layers["head"].in_items, g.layers["stages.2.0.conv2"].out_items)
    # inputs and outputs are never items
    assert bool((g.layers["stem"].in_items == -1).all())
    assert bool((g.layers["head"].out_items == -1).all())


def test_concat_grouped_and_depthwise_couplings() -> None:
    g = trace_channels(ConcatNet(), torch.randn(2, 3, 6, 6))
    a, b = g.layers["a"].out_items, g.layers["b"].out_items
    assert torch.equal(g.layers["mix"].in_items, torch.cat([a, b]))
    assert torch.equal(g.layers["se"].out_items, g.layers["mix"].out_items)  # z * gate
    g = trace_channels(GroupedNet(), torch.randn(2, 3, 6, 6))
    dw, dw2 = g.layers["dw"], g.layers["dw2"]
    assert torch.equal(dw.in_items, dw.out_items)  # depthwise: channel j is channel j
    assert torch.equal(dw2.out_items, dw2.in_items.repeat_interleave(2))  # multiplier 2
    grouped = g.layers["grouped"]
    assert torch.equal(grouped.out_items.view(4, 3), grouped.out_items[:3].repeat(4, 1))


def test_vit_heads_and_hidden_units_only() -> None:
    g = trace_channels(vit(), torch.randn(2, 1, 8, 8))
    kinds = {n: lay.kind for n, lay in g.layers.items()}
    assert kinds == {"blocks.0.attn": "attention", "blocks.0.mlp.0": "linear",
                     "blocks.0.mlp.2": "linear"}
    assert g.layers["blocks.0.attn"].out_items.numel() == 4  # heads
    assert bool((g.layers["blocks.0.mlp.2"].out_items == -1).all())  # the residual stream


def test_untraceable_model_falls_back_to_its_children(caplog: pytest.LogCaptureFixture
                                                      ) -> None:
    g = trace_channels(Untraceable(), torch.randn(2, 8))
    assert g.fallbacks and "not traceable" in g.fallbacks[0]
    assert set(g.layers) == {"body.0", "body.2"} and g.n_items == 16


@pytest.mark.parametrize("method", ["spartan", "dual_averaging", "imp"])
@pytest.mark.parametrize("make,x", [
    (resnet, torch.randn(4, 3, 8, 8)), (ConcatNet, torch.randn(4, 3, 6, 6))],
    ids=["resnet", "concat"])
def test_coupled_channels_are_kept_together(method: str, make: Callable[[], nn.Module],
                                            x: Tensor) -> None:
    model = make()
    s = train(model, x, cfg(method=method), 8)
    keep = s.item_mask()
    s.finalize()
    g = trace_channels(model, x)
    for lay in g.layers.values():
        if lay.kind != "linear" and lay.kind != "conv":
            continue
        w = lay.module.weight.detach()
        for c, item in enumerate(lay.out_items.tolist()):
            if item >= 0 and not keep[item]:
                assert not bool(w[c].any()), (lay.name, c)
    assert 0 < int(keep.sum()) < keep.numel()


def test_floors_hold_and_no_layer_goes_to_zero() -> None:
    model = mlp()
    s = train(model, torch.randn(8, 12), cfg(budget=0.05, min_keep=0.25), 6)
    keep = s.item_mask()
    for members in s.graph.groups:
        assert int(keep[members].sum()) >= math.ceil(0.25 * members.numel())
    s2 = train(mlp(), torch.randn(8, 12), cfg(budget=0.01, min_keep=0.0), 6)
    for members in s2.graph.groups:
        assert int(s2.item_mask()[members].sum()) >= 1


@pytest.mark.parametrize("allocation", ["global", "uniform"])
@pytest.mark.parametrize("kind", ["params", "flops"])
def test_budget_met_on_the_exact_cost(allocation: str, kind: str) -> None:
    x = torch.randn(4, 3, 8, 8)
    model = resnet()
    costs = builtin_costs(trace_channels(model, x), kind)
    s = train(model, x, cfg(budget=0.5, allocation=allocation), 6, costs=costs)
    rep = s.report()
    if allocation == "global":
        assert rep.kept_cost <= 0.5 * rep.cost * (1 + 1e-9)
        assert rep.kept_cost >= 0.4 * rep.cost  # and not far under it
    else:  # each layer group keeps about half its items
        keep = s.item_mask()
        for members in s.graph.groups:
            assert abs(int(keep[members].sum()) - 0.5 * members.numel()) <= \
                max(1, 0.2 * members.numel())


def test_item_costs_are_what_removal_saves() -> None:
    model, x = mlp(), torch.randn(2, 12)
    g = trace_channels(model, x)
    costs = builtin_costs(g, "params")
    keep = torch.ones(g.n_items, dtype=torch.bool)
    keep[3] = False
    c = item_costs(g, costs, keep)
    for i in (0, 3, 40):
        other = keep.clone()
        other[i] = not other[i]
        assert float(c[i]) == pytest.approx(abs(total_cost(g, costs, other)
                                                - total_cost(g, costs, keep)))
    # a hidden unit of layers.0 removes its row (12 weights + bias) and a column of layers.1
    # (24 outputs): 37 parameters
    assert float(c[0]) == pytest.approx(12 + 1 + 24)


def test_resume_gives_the_same_run() -> None:
    x = torch.randn(6, 3, 8, 8)
    config = cfg(method="spartan", budget=0.5)
    ref = resnet()
    start = copy.deepcopy(ref.state_dict())

    def run(model: nn.Module, steps: range, sp: Sparsifier, opt: torch.optim.Optimizer) -> None:
        for _ in steps:
            loss = model(x).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sp.step()

    s = Sparsifier(ref, config, 10, example_inputs=x)
    opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
    run(ref, range(4), s, opt)
    saved = (copy.deepcopy(ref.state_dict()), copy.deepcopy(s.state_dict()),
             copy.deepcopy(opt.state_dict()))
    run(ref, range(6), s, opt)

    other = resnet()
    other.load_state_dict(start)
    s2 = Sparsifier(other, config, 10, example_inputs=x)
    opt2 = torch.optim.SGD(other.parameters(), lr=0.05, momentum=0.9)
    other.load_state_dict(saved[0])
    s2.load_state_dict(saved[1])
    opt2.load_state_dict(saved[2])
    run(other, range(6), s2, opt2)
    assert torch.equal(s.item_mask(), s2.item_mask())
    for (k, a), b in zip(ref.state_dict().items(), other.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)


def test_identical_models_give_identical_masks() -> None:
    """What DDP relies on: the masks are a function of the weights and the step."""
    x = torch.randn(4, 3, 8, 8)
    a = resnet()
    b = copy.deepcopy(a)
    sa, sb = train(a, x, cfg(), 5), train(b, x, cfg(), 5)
    assert torch.equal(sa.item_mask(), sb.item_mask())


def test_finalize_zeroes_whole_items_and_keeps_outputs() -> None:
    x = torch.randn(4, 12)
    model = mlp()
    s = train(model, x, cfg(method="spartan", finetune_frac=0.0), 6)
    model.eval()
    with torch.no_grad():
        before = model(x)
    keep = s.item_mask()
    s.finalize()
    with torch.no_grad():
        after = model(x)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)
    w0, w1 = model.layers[0].weight, model.layers[1].weight
    dropped = torch.nonzero(~keep[:32]).squeeze(1)
    assert not bool(w0[dropped].any()) and not bool(w1[:, dropped].any())
    assert not bool(model.layers[0].bias[dropped].any())
    assert not torch.nn.utils.parametrize.is_parametrized(model.layers[0])


def test_refusals() -> None:
    with pytest.raises(ValueError, match="example_inputs"):
        Sparsifier(mlp(), cfg(), 3)
    with pytest.raises(ValueError, match="allocation global or uniform"):
        cfg(allocation="erk")
    with pytest.raises(ValueError, match="no blocks"):
        cfg(block=(2, 2))
    with pytest.raises(ValueError, match="min_keep"):
        cfg(min_keep=1.5)
    with pytest.raises(ValueError, match="no channel of this model can be removed"):
        Sparsifier(nn.Linear(4, 2), cfg(), 3, example_inputs=torch.randn(2, 4))
    with pytest.raises(ValueError, match="costs do not match"):
        Sparsifier(mlp(), cfg(), 3, costs={"head": {"slope": 1.0}},
                   example_inputs=torch.randn(2, 12))
    with pytest.raises(ValueError, match="slope must be finite and >= 0"):
        Sparsifier(mlp(), cfg(), 3, example_inputs=torch.randn(2, 12),
                   costs={n: {"slope": -1.0} for n in ("layers.0", "layers.1", "head")})
    s = train(mlp(), torch.randn(2, 12), cfg(), 2)
    state = s.state_dict()
    other = Sparsifier(mlp(), cfg(budget=0.3), 2, example_inputs=torch.randn(2, 12))
    with pytest.raises(ValueError, match="state config"):
        other.load_state_dict(state)


def test_decoder_heads_and_gated_mlp() -> None:
    x = torch.randn(3, 5, 6)
    model = TinyDecoder()
    g = trace_channels(model, x)
    assert g.layers["attn"].kind == "attention" and g.layers["attn"].out_items.numel() == 4
    assert torch.equal(g.layers["gate_proj"].out_items, g.layers["up_proj"].out_items)
    assert torch.equal(g.layers["down_proj"].in_items, g.layers["up_proj"].out_items)
    s = train(model, x, cfg(budget=0.4), 6)
    assert 0 < int(s.item_mask()[g.layers["attn"].out_items].sum()) < 4 or \
        int(s.item_mask()[g.layers["up_proj"].out_items].sum()) < 24


def test_flops_of_a_transposed_conv_count_input_positions() -> None:
    # 4x4 -> 8x8 upsampling: each weight multiplies once per input position (16); a conv
    # counts its output positions (8x8 = 64 after the upsampling).
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
                          nn.ConvTranspose2d(4, 6, 2, stride=2), nn.ReLU(),
                          nn.Conv2d(6, 2, 3, padding=1))
    g = trace_channels(model, torch.randn(2, 3, 4, 4))
    flops = builtin_costs(g, "flops")
    assert g.layers["2"].positions == 16 and g.layers["4"].positions == 64
    assert flops["2"].slope == pytest.approx(2 * 2 * 2 * 16)  # per (in, out) pair: 2 x k x k x 16


def test_floor_fraction_is_the_cost_the_floors_keep() -> None:
    model, x = mlp(), torch.randn(2, 12)
    s = Sparsifier(model, cfg(min_keep=0.5), 4, example_inputs=x)
    assert s.floor_fraction(1.0) == pytest.approx(1.0)
    half = s.floor_fraction()
    assert 0.2 < half < 0.6  # about half of each width: a quarter to a half of the cost
    assert s.floor_fraction(0.0) < half  # one item per layer group
