"""Training scikit-learn's digits MLP (64-256-256-10) to 90% and 95% sparsity.

The same data order, initialisation and optimiser (SGD, momentum 0.9) for every method, with the
Sparsifier's default schedule and beta; accuracy is on a held-out quarter of the data.
"""

from __future__ import annotations

import functools

import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from spartan import Sparsifier, SparsifierConfig
from spartan.config import Method

EPOCHS, BATCH, LR = 30, 64, 0.05


@functools.cache
def _data() -> tuple[torch.Tensor, ...]:
    x, y = load_digits(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(x / 16.0, y, test_size=0.25, random_state=0,
                                          stratify=y)
    f = functools.partial(torch.tensor, dtype=torch.float32)
    return f(xtr), f(xte), torch.tensor(ytr), torch.tensor(yte)


@functools.cache
def train(method: Method | None, budget: float, seed: int) -> tuple[float, float, float]:
    """(test accuracy, report density, measured density of exact nonzeros) after training."""
    torch.set_num_threads(1)
    xtr, xte, ytr, yte = _data()
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                          nn.Linear(256, 10))
    per_epoch = -(-len(xtr) // BATCH)
    sp = None
    if method is not None:
        sp = Sparsifier(model, SparsifierConfig(method=method, budget=budget),
                        total_steps=EPOCHS * per_epoch)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    order = torch.Generator().manual_seed(seed)
    for _ in range(EPOCHS):
        perm = torch.randperm(len(xtr), generator=order)
        for i in range(per_epoch):
            idx = perm[i * BATCH:(i + 1) * BATCH]
            loss = nn.functional.cross_entropy(model(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if sp is not None:
                sp.step()
    density = 1.0 if sp is None else sp.finalize().density
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    nonzero = sum(int(torch.count_nonzero(w)) for w in weights) / sum(w.numel() for w in weights)
    with torch.no_grad():
        acc = float((model(xte).argmax(1) == yte).float().mean())
    return acc, density, nonzero


@pytest.mark.slow
@pytest.mark.parametrize("budget", [0.1, 0.05])
@pytest.mark.parametrize("method", ["spartan", "dual_averaging", "imp"])
def test_final_density_equals_budget(method: Method, budget: float) -> None:
    n = 64 * 256 + 256 * 256 + 256 * 10
    acc, density, nonzero = train(method, budget, 0)
    assert density == pytest.approx(budget, abs=1.0 / n)
    assert nonzero <= density  # exact zeros outside the mask
    assert nonzero >= density - 1e-3
    assert acc > 0.9


@pytest.mark.slow
def test_spartan_at_95_percent_is_close_to_dense_and_beats_imp() -> None:
    seeds = (0, 1, 2)
    mean = lambda method: sum(train(method, 0.05, s)[0] for s in seeds) / len(seeds)  # noqa: E731
    dense, spartan, imp = mean(None), mean("spartan"), mean("imp")
    assert dense - spartan <= 0.03, (dense, spartan)
    assert spartan >= imp, (spartan, imp)
