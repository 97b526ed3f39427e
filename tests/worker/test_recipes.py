"""Training recipes one by one: parameter groups, warmup + cosine, mixed precision with exact
masks, gradient clipping, and fp16 refused off the GPU."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from spartan import Sparsifier, SparsifierConfig
from spartan_service.jobs.spec import TrainingSpec
from spartan_service.worker.recipes import Precision, lr_at, make_optimizer, param_groups

CPU = torch.device("cpu")


def small() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 3))


def test_weight_decay_skips_norms_and_biases_unless_asked() -> None:
    model = small()
    decay, rest = param_groups(model, 0.1, decay_all=False)
    assert [p.dim() for p in decay["params"]] == [2, 2] and decay["weight_decay"] == 0.1
    assert all(p.dim() == 1 for p in rest["params"]) and rest["weight_decay"] == 0.0
    assert len(rest["params"]) == 4  # two biases, the norm's scale and shift
    (everything,) = param_groups(model, 0.1, decay_all=True)
    assert len(everything["params"]) == 6
    opt = make_optimizer(model, TrainingSpec(weight_decay=0.05, optimizer="sgd"))
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]


def test_lr_warms_up_linearly_then_follows_the_cosine() -> None:
    t = TrainingSpec(lr=1.0, lr_warmup_frac=0.1, lr_schedule="cosine")
    lrs = [lr_at(t, s, 100) for s in range(100)]
    assert lrs[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[55] == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    constant = TrainingSpec(lr=0.3, lr_schedule="constant")
    assert {lr_at(constant, s, 50) for s in range(50)} == {0.3}


def test_bf16_autocast_keeps_masked_weights_exactly_zero() -> None:
    model = small()
    config = SparsifierConfig(method="spartan", budget=0.3, warmup_frac=0.0, finetune_frac=0.0)
    sparsifier = Sparsifier(model, config, total_steps=4)
    precision = Precision("bf16", CPU)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    for _ in range(4):
        with precision.autocast():
            out = model(x)
            assert out.dtype == torch.bfloat16
            loss = nn.functional.cross_entropy(out.float(), y)
        opt.zero_grad()
        precision.backward(loss)
        precision.step(opt, model.parameters(), clip=None)
        sparsifier.step()
    masks = sparsifier.masks()
    with torch.no_grad(), precision.autocast():
        masked = model(x)
    sparsifier.finalize()
    for name, mask in masks.items():
        weight = dict(model.named_parameters())[name]
        assert bool((weight[~mask.bool()] == 0).all()), name
    with torch.no_grad(), precision.autocast():
        torch.testing.assert_close(model(x), masked)  # the plain model computes the same


def test_clipping_bounds_the_global_gradient_norm() -> None:
    model = small()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    loss = model(torch.randn(8, 6) * 100).pow(2).sum()
    loss.backward()
    before = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
    Precision("fp32", CPU).step(opt, model.parameters(), clip=0.5)
    after = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
    assert float(before) > 0.5 and float(after) == pytest.approx(0.5, rel=1e-4)


def test_fp16_needs_a_gpu() -> None:
    with pytest.raises(ValueError, match="'fp16' needs a GPU"):
        Precision("fp16", CPU)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 with a gradient scaler needs "
                    "a CUDA device (none here)")
def test_fp16_scaler_steps_and_masks_stay_exact_on_the_gpu() -> None:
    device = torch.device("cuda")
    model = small().to(device)
    sparsifier = Sparsifier(model, SparsifierConfig(budget=0.3, warmup_frac=0.0,
                                                    finetune_frac=0.0), total_steps=3)
    precision = Precision("fp16", device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 6, device=device), torch.randint(0, 3, (32,), device=device)
    for _ in range(3):
        with precision.autocast():
            loss = nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad()
        precision.backward(loss)
        precision.step(opt, model.parameters(), clip=1.0)
        sparsifier.step()
    assert precision.state_dict()["scaler"]["scale"] > 0
    masks = sparsifier.masks()
    sparsifier.finalize()
    for name, mask in masks.items():
        assert bool((dict(model.named_parameters())[name][~mask.bool()] == 0).all())
