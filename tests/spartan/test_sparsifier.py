"""Sparsifier lifecycle: step, freeze, finalize, state_dict / load_state_dict, misuse."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from spartan import Sparsifier, SparsifierConfig
from spartan.config import Method

torch.set_num_threads(1)


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(),
                         nn.Linear(16, 4))


BATCHES = [(torch.randn(16, 12, generator=torch.Generator().manual_seed(i)),
            torch.arange(16) % 4) for i in range(40)]


def train(model: nn.Module, sp: Sparsifier, opt: torch.optim.Optimizer, steps: range) -> None:
    for i in steps:
        x, y = BATCHES[i]
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sp.step()


def make(seed: int, cfg: SparsifierConfig,
         total: int = 40) -> tuple[nn.Module, Sparsifier, torch.optim.Optimizer]:
    model = mlp(seed)
    sp = Sparsifier(model, cfg, total_steps=total)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return model, sp, opt


@pytest.mark.parametrize("method", ["spartan", "dual_averaging", "imp"])
@pytest.mark.parametrize("stop", [5, 17, 35])  # warmup, anneal, finetune (frozen from 32)
def test_resume_is_bit_exact(method: Method, stop: int) -> None:
    cfg = SparsifierConfig(method=method, budget=0.2, warmup_frac=0.3, finetune_frac=0.2)
    model, sp, opt = make(0, cfg)
    train(model, sp, opt, range(40))
    masks = sp.masks()
    sp.finalize()

    first, sp1, opt1 = make(0, cfg)
    train(first, sp1, opt1, range(stop))
    saved = copy.deepcopy((first.state_dict(), opt1.state_dict(), sp1.state_dict()))
    resumed, sp2, opt2 = make(123, cfg)  # other init: everything must come from the checkpoint
    resumed.load_state_dict(saved[0])
    opt2.load_state_dict(saved[1])
    sp2.load_state_dict(saved[2])
    train(resumed, sp2, opt2, range(stop, 40))
    assert all(torch.equal(masks[k], v) for k, v in sp2.masks().items())
    sp2.finalize()
    for a, b in zip(model.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_finalize_leaves_plain_modules_with_exact_zeros() -> None:
    plain = mlp(0)
    model, sp, opt = make(0, SparsifierConfig(budget=0.2, finetune_frac=0.0))
    train(model, sp, opt, range(30))
    assert not sp.frozen
    masks = sp.masks()
    x = BATCHES[0][0]
    with torch.no_grad():
        before = model(x)
    report = sp.finalize()
    with torch.no_grad():
        assert torch.equal(model(x), before)
    assert list(model.state_dict()) == list(plain.state_dict())
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert type(model.get_submodule("0")) is nn.Linear
    assert not model._forward_pre_hooks and not model._forward_hooks
    for name, mask in masks.items():
        w = model.get_parameter(name)
        assert bool((w[~mask] == 0).all()) and bool((w[mask] != 0).all())
    assert report.density == pytest.approx(0.2, abs=3 / 1000)
    assert sum(r.budget_share for r in report.layers) == pytest.approx(
        report.kept_cost / (0.2 * report.cost))
    with pytest.raises(ValueError, match="finalized"):
        sp.step()


def test_masks_freeze_in_the_finetune_phase() -> None:
    model, sp, opt = make(0, SparsifierConfig(budget=0.3, finetune_frac=0.5), total=20)
    train(model, sp, opt, range(10))
    assert sp.frozen
    frozen = sp.masks()
    train(model, sp, opt, range(10, 20))
    assert all(torch.equal(frozen[k], v) for k, v in sp.masks().items())
    # Only kept weights train: the effective (masked) weight is zero off the mask.
    for name, mask in frozen.items():
        layer = model.get_submodule(name.rpartition(".")[0])
        assert isinstance(layer, nn.Linear)
        assert bool((layer.weight.detach()[~mask] == 0).all())


@pytest.mark.parametrize("method, pruned_grad", [
    ("spartan", True), ("dual_averaging", True), ("imp", False)])
def test_gradients_reach_pruned_weights_only_with_dual_averaging(
        method: Method, pruned_grad: bool) -> None:
    model, sp, opt = make(0, SparsifierConfig(method=method, budget=0.2, warmup_frac=0.0))
    x, y = BATCHES[0]
    nn.functional.cross_entropy(model(x), y).backward()
    mask = sp.masks()["2.weight"]
    grad = sp.weights["2.weight"].grad
    assert grad is not None
    assert bool((grad[~mask] != 0).any()) == pruned_grad


def test_full_budget_stays_dense() -> None:
    model, sp, opt = make(0, SparsifierConfig(budget=1.0))
    train(model, sp, opt, range(10))
    report = sp.finalize()
    assert report.density == 1.0
    assert all(bool((p != 0).all()) for p in model.parameters())


def test_training_under_autocast() -> None:
    model, sp, opt = make(0, SparsifierConfig(budget=0.2, warmup_frac=0.0))
    for x, y in BATCHES[:3]:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sp.step()
        assert torch.isfinite(loss)
    w = sp.weights["0.weight"]
    assert w.dtype == torch.float32 and w.grad is not None and w.grad.dtype == torch.float32


def test_weights_loaded_after_attaching_are_used() -> None:
    model, sp, _ = make(0, SparsifierConfig(budget=1.0))
    other = mlp(7)
    model.load_state_dict({k.replace(".weight", ".parametrizations.weight.original"): v
                           for k, v in other.state_dict().items()})
    x = BATCHES[0][0]
    with torch.no_grad():
        assert torch.equal(model(x), other(x))


def test_fallback_is_logged_and_reported(caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 10))
    with caplog.at_level(logging.WARNING, logger="spartan"):
        sp = Sparsifier(model, SparsifierConfig(block=(4, 4), warmup_frac=0.0), total_steps=5)
    assert "2.weight" in caplog.text and "0.weight" not in caplog.text
    report = sp.report()
    assert report.fallbacks == ["2.weight"]
    row = {r.name: r for r in report.layers}["2.weight"]
    assert row.block == (1, 1) and "does not divide" in (row.fallback or "")
    assert report.to_dict()["fallbacks"] == ["2.weight"]


def test_load_state_dict_rejects_another_run() -> None:
    _, sp, _ = make(0, SparsifierConfig(budget=0.2))
    state = sp.state_dict()
    _, other, _ = make(0, SparsifierConfig(budget=0.3))
    with pytest.raises(ValueError, match="config"):
        other.load_state_dict(state)
    with pytest.raises(ValueError, match="version"):
        sp.load_state_dict({**state, "version": 99})


def test_misuse_raises() -> None:
    with pytest.raises(ValueError, match="SparsifierConfig"):
        Sparsifier(mlp(), {"budget": 0.1}, total_steps=10)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no maskable weights"):
        Sparsifier(nn.Sequential(nn.ReLU()), SparsifierConfig(), total_steps=10)
    with pytest.raises(ValueError, match="total_steps"):
        Sparsifier(mlp(), SparsifierConfig(), total_steps=0)
    model = mlp()
    Sparsifier(model, SparsifierConfig(), total_steps=10)
    with pytest.raises(ValueError, match="already parametrized"):
        Sparsifier(model, SparsifierConfig(), total_steps=10)


def test_moving_the_model_after_attaching_is_refused() -> None:
    model, sp, _ = make(0, SparsifierConfig(budget=0.2, warmup_frac=0.0))
    model.double()
    with pytest.raises(ValueError, match="move or cast the model first"):
        model(BATCHES[0][0].double())


@pytest.mark.parametrize("block", [(1, 1), (4, 4), (16, 16), (32, 32)])
def test_block_sizes(block: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32))
    sp = Sparsifier(model, SparsifierConfig(budget=0.25, block=block, warmup_frac=0.0),
                    total_steps=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(4):
        loss = model(torch.randn(8, 64)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sp.step()
    report = sp.finalize()
    assert report.fallbacks == []
    assert report.density == pytest.approx(0.25, abs=block[0] * block[1] / (64 * 96))
    w = model.get_parameter("0.weight").detach()
    tiles = w.reshape(64 // block[0], block[0], 64 // block[1], block[1]) != 0
    assert torch.equal(tiles.all(dim=(1, 3)), tiles.any(dim=(1, 3)))
