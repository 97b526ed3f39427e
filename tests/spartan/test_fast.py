"""The fused CPU step (spartan/_fast.py, spartan/_native.c) against the torch path it replaces."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from spartan import Sparsifier, SparsifierConfig, _native, hard_topk
from spartan.config import Method

torch.set_num_threads(1)


@pytest.fixture
def native(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Lets a test switch the fused path; the library is looked up again afterwards."""
    _native.reset()
    yield monkeypatch
    monkeypatch.delenv("SPARTAN_NATIVE", raising=False)
    _native.reset()


def use_native(mp: pytest.MonkeyPatch, on: bool) -> None:
    mp.setenv("SPARTAN_NATIVE", "1" if on else "0")
    _native.reset()


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(20, 48), nn.ReLU(), nn.Linear(48, 24), nn.ReLU(),
                         nn.Linear(24, 5))


X = torch.randn(32, 20, generator=torch.Generator().manual_seed(1))
Y = torch.arange(32) % 5


def run(cfg: SparsifierConfig, steps: int = 30, costs: object = None,
        weights: list[torch.Tensor] | None = None) -> tuple[nn.Module, Sparsifier, list[dict]]:
    model = mlp()
    if weights is not None:
        with torch.no_grad():
            for p, w in zip((m.weight for m in model if isinstance(m, nn.Linear)), weights,
                            strict=True):
                p.copy_(w)
    sp = Sparsifier(model, cfg, total_steps=steps + 10, costs=costs)  # type: ignore[arg-type]
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    trace = []
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(X), Y)
        opt.zero_grad()
        loss.backward()
        grads = [p.grad.clone() for p in sp.weights.values()]  # type: ignore[union-attr]
        opt.step()
        sp.step()
        trace.append({"loss": float(loss.detach()), "grads": grads, "masks": sp.masks(),
                      "fast": [g.fast_mode for g in sp._groups]})
    return model, sp, trace


class SmallCNN(nn.Module):
    """3x3 and 1x1 convs (masked per kernel and per weight), a grouped conv and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.ReLU(),
                                  nn.Conv2d(8, 4, 1), nn.ReLU(), nn.Flatten())
        self.head = nn.Linear(4 * 4 * 5, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x.view(-1, 1, 4, 5)))


@pytest.mark.parametrize("block", [(1, 1), (2, 2)])  # 2x2: the first conv falls back to 1x1
def test_fused_step_matches_torch_path_on_convs(native: pytest.MonkeyPatch,
                                                block: tuple[int, int]) -> None:
    cfg = SparsifierConfig(budget=0.3, block=block, warmup_frac=0.3, finetune_frac=0.2)
    runs = []
    for on in (True, False):
        use_native(native, on)
        model = SmallCNN()
        sp = Sparsifier(model, cfg, total_steps=30)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        trace = []
        for _ in range(20):
            loss = nn.functional.cross_entropy(model(X), Y)
            opt.zero_grad()
            loss.backward()
            trace.append([p.grad.clone() for p in sp.weights.values()])  # type: ignore[union-attr]
            opt.step()
            sp.step()
            trace[-1].append(sp.masks())
        assert sp._groups[0].fast_mode == on
        runs.append(trace)
    for a, b in zip(*runs, strict=True):
        for ga, gb in zip(a[:-1], b[:-1], strict=True):
            torch.testing.assert_close(ga, gb, rtol=2e-3, atol=2e-5)
        assert all(torch.equal(a[-1][k], b[-1][k]) for k in a[-1])


def layer_costs(name: str, param: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    scale = {"0.weight": 3.0, "2.weight": 1.0, "4.weight": 0.5}[name]
    return torch.full(grid, scale) + torch.rand(grid, generator=torch.Generator().manual_seed(2))


def test_library_builds_here() -> None:
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler on this machine: the fused path is off")
    _native.reset()
    assert _native.library() is not None


# 4x4: the head (5 x 24) falls back to 1x1; 4x16: only the middle layer (24 x 48) has blocks,
# 16 wide (the passes' lane-wise tile sums). layer_costs gives a cost per weight: 1x1 only.
@pytest.mark.parametrize("method", ["spartan", "dual_averaging"])
@pytest.mark.parametrize("allocation", ["global", "uniform"])
@pytest.mark.parametrize(("weighted", "block"),
                         [(False, (1, 1)), (True, (1, 1)), (False, (4, 4)), (False, (4, 16))])
def test_fused_step_matches_torch_path(native: pytest.MonkeyPatch, method: Method,
                                       allocation: str, weighted: bool,
                                       block: tuple[int, int]) -> None:
    cfg = SparsifierConfig(method=method, budget=0.2, allocation=allocation,  # type: ignore[arg-type]
                           block=block, warmup_frac=0.3, finetune_frac=0.2)
    costs = layer_costs if weighted else None
    use_native(native, True)
    _, _, fast = run(cfg, costs=costs)
    use_native(native, False)
    _, _, slow = run(cfg, costs=costs)
    assert all(all(t["fast"]) for t in fast[1:25])  # the fused path ran (not at step 0)
    assert not any(any(t["fast"]) for t in slow)
    for step, (a, b) in enumerate(zip(fast, slow, strict=True)):
        assert all(torch.equal(a["masks"][k], b["masks"][k]) for k in a["masks"]), step
        if step >= 12:  # beyond, float rounding (1e-7) grows through training at lr 0.1
            continue
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6)
        for ga, gb in zip(a["grads"], b["grads"], strict=True):
            torch.testing.assert_close(ga, gb, rtol=2e-3, atol=1e-4)


@pytest.mark.parametrize("weighted", [False, True])
def test_hard_mask_exact_with_ties_and_any_bracket(native: pytest.MonkeyPatch,
                                                   weighted: bool) -> None:
    """Weights on a coarse grid tie by the hundreds at the threshold; brackets that are far too
    narrow, too wide or off-centre must still give the exact knapsack of the torch path."""
    use_native(native, True)
    gen = torch.Generator().manual_seed(3)
    grid = [torch.randint(-6, 7, shape, generator=gen).float() / 8
            for shape in ((48, 20), (24, 48), (5, 24))]
    cfg = SparsifierConfig(method="dual_averaging", budget=0.3, warmup_frac=0.5,
                           finetune_frac=0.0)
    model, sp, _ = run(cfg, steps=1, costs=layer_costs if weighted else None, weights=grid)
    g = sp._groups[0]
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    for step, delta in enumerate([1e-12, 10.0, 1e-3, None, 1e-7, 3.0]):
        if delta is not None:
            g.fast.delta = delta  # type: ignore[union-attr]
        loss = nn.functional.cross_entropy(model(X), Y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():  # back on the grid: ties stay
            for p in sp.weights.values():
                p.copy_(torch.round(p * 8) / 8)
        sp.step()
        assert g.fast_mode, step
        frac = sp.schedule.fraction(sp.step_count)
        budget = g.solver_budget(frac)
        expect = hard_topk(g.v.clone(), g.solver_costs, budget)
        assert torch.equal(g.h, expect), step
        kept = float(expect.sum()) if g.unit else float(g.c[expect].double().sum())
        assert kept <= budget


def test_soft_mask_meets_budget(native: pytest.MonkeyPatch) -> None:
    use_native(native, True)
    cfg = SparsifierConfig(budget=0.1, warmup_frac=0.2, finetune_frac=0.2, beta_final=200.0)
    _, sp, trace = run(cfg, steps=25, costs=layer_costs)
    g = sp._groups[0]
    assert trace[-1]["fast"] == [True]
    budget = g.solver_budget(sp.schedule.fraction(sp.step_count))
    assert float((g.m.double() * g.c.double()).sum()) == pytest.approx(budget, rel=1e-4)


def test_non_finite_weights_are_refused(native: pytest.MonkeyPatch) -> None:
    use_native(native, True)
    model, sp, _ = run(SparsifierConfig(budget=0.2, warmup_frac=0.0), steps=3)
    assert sp._groups[0].fast_mode
    with torch.no_grad():
        sp.weights["2.weight"][0, 0] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        sp.step()


def test_off_switch_and_missing_compiler(native: pytest.MonkeyPatch, tmp_path: Path,
                                         caplog: pytest.LogCaptureFixture) -> None:
    use_native(native, False)
    assert _native.library() is None
    _, sp, trace = run(SparsifierConfig(budget=0.2), steps=3)
    assert sp._groups[0].fast is None and not any(any(t["fast"]) for t in trace)
    native.setenv("SPARTAN_NATIVE", "1")
    native.setenv("CC", str(tmp_path / "no-such-compiler"))
    native.setenv("SPARTAN_CACHE_DIR", str(tmp_path / "cache"))
    _native.reset()
    with caplog.at_level(logging.WARNING, logger="spartan._native"):
        assert _native.library() is None
    assert "fused CPU passes are off" in caplog.text


def test_fused_step_under_autocast(native: pytest.MonkeyPatch) -> None:
    """bfloat16 autocast in the training loop: the masks stay float32 and match the torch path."""
    cfg = SparsifierConfig(budget=0.2, warmup_frac=0.3, finetune_frac=0.2)
    results = []
    for on in (True, False):
        use_native(native, on)
        model = mlp()
        sp = Sparsifier(model, cfg, total_steps=20)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(12):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = nn.functional.cross_entropy(model(X), Y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sp.step()
        g = sp._groups[0]
        assert g.fast_mode == on and g.m is not None and g.m.dtype == torch.float32
        results.append((sp.masks(), g.tau))
    (fast_masks, fast_tau), (slow_masks, slow_tau) = results
    assert fast_tau == pytest.approx(slow_tau, rel=1e-3)
    changed = sum(int((fast_masks[k] != slow_masks[k]).sum()) for k in fast_masks)
    assert changed <= 2  # bfloat16 rounding may swap a weight at the threshold


def test_switching_paths_between_steps(native: pytest.MonkeyPatch) -> None:
    """The fused path turned off and on mid-training: each step's masks as the torch path's."""
    cfg = SparsifierConfig(budget=0.2, warmup_frac=0.3, finetune_frac=0.2)
    use_native(native, True)
    model = mlp()
    sp = Sparsifier(model, cfg, total_steps=40)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(36):
        use_native(native, step % 3 != 2)
        loss = nn.functional.cross_entropy(model(X), Y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sp.step()
        g = sp._groups[0]
        if not sp.frozen:
            budget = g.solver_budget(sp.schedule.fraction(sp.step_count))
            assert torch.equal(g.h, hard_topk(g.v.clone(), g.solver_costs, budget)), step
    sp.finalize()
