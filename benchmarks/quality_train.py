"""One training run of the quality benchmark: a dataset, a model, a method, a sparsity, a seed.

Models and data come from the worker's registries (spartan_service.zoo.build_model,
worker.data.load_dataset); the split is fixed (seed 0, 20% held out as the test set), the seed
sets the initialisation and the batch order. Training: SGD with momentum 0.9, lr 0.05, batch 64,
cross-entropy; the Sparsifier steps after every optimiser step and is finalised at the end, so
the model evaluated holds exact zeros.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from spartan import Sparsifier, SparsifierConfig

DATASETS: dict[str, dict[str, Any]] = {"digits": {}, "mnist1d": {"num_samples": 5000}}
# Fashion-MNIST from Debian's dataset-fashion-mnist package, its own 10k test set held out;
# "fashion-quick" is its first 6000 training and 2000 test images. "fashion:N" trains on the
# first N training images (test set held out); "fashion-tune:N" trains on the first N and
# validates on the last TUNE_HOLDOUT training images, for tuning that never sees the test set.
FASHION: dict[str, dict[str, Any]] = {"fashion": {},
                                      "fashion-quick": {"limit": 6000, "val_limit": 2000}}
TUNE_HOLDOUT = 10000
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "mlp": ("mlp", {"hidden": [256, 256]}),
    "cnn": ("cnn", {"channels": [32, 64]}),
    "mlp512": ("mlp", {"hidden": [512, 512]}),
    "lenet300": ("mlp", {"hidden": [300, 100]}),  # LeNet-300-100, the classic pruning MLP
    "cnnbn": ("cnnbn", {}),  # CNNBN below
}


class CNNBN(nn.Module):
    """conv 32 - BN - ReLU - pool, conv 64 - BN - ReLU - pool, linear 128, linear 10."""

    def __init__(self, channels: int, size: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.MaxPool2d(2))
        self.fc = nn.Linear(64 * (size // 4) ** 2, 128)
        self.head = nn.Linear(128, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.fc(self.features(x).flatten(1))))
TEST_FRACTION, SPLIT_SEED = 0.2, 0
LR, MOMENTUM, BATCH = 0.05, 0.9, 64


@dataclass(frozen=True)
class Setting:
    """What to train. method "dense" ignores sparsity, block and overrides."""

    dataset: str
    model: str
    method: str
    sparsity: float = 0.0
    block: tuple[int, int] = (1, 1)
    seed: int = 0
    epochs: int = 30
    overrides: tuple[tuple[str, Any], ...] = ()  # extra SparsifierConfig fields

    def label(self) -> str:
        extra = "".join(f" {k}={v}" for k, v in self.overrides)
        blk = "" if self.block == (1, 1) else f" block {self.block[0]}x{self.block[1]}"
        return (f"{self.dataset}/{self.model} {self.method} {self.sparsity:.0%}{blk}"
                f" seed {self.seed}{extra}")


@dataclass
class RunResult:
    setting: Setting
    accuracy: float  # test accuracy, in percent
    density: float  # kept fraction of the masked weights (1.0 for dense)
    seconds: float
    model: nn.Module = field(repr=False)


@cache
def dataset(name: str) -> Any:
    """The split, standardised dataset (cached: every run of a dataset shares it)."""
    from spartan_service.worker.data import load_dataset

    if name in FASHION:
        return fashion(**FASHION[name])
    base, _, size = name.partition(":")
    if base in ("fashion", "fashion-tune") and size.isdigit():
        return fashion(limit=int(size), holdout=TUNE_HOLDOUT if base == "fashion-tune" else None)
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; use one of {', '.join(DATASETS)}, "
                         f"{', '.join(FASHION)}")
    return load_dataset(name, DATASETS[name], TEST_FRACTION, SPLIT_SEED)


def fashion(limit: int | None = None, val_limit: int | None = None,
            holdout: int | None = None) -> Any:
    """Fashion-MNIST through the worker's streaming source, gathered into tensors (60k x 784
    floats: 188 MB), standardised with the training set's pixel mean and std. With `holdout`,
    the last `holdout` training images are the validation set and the test set is not read."""
    from spartan_service.worker.data import Dataset
    from spartan_service.worker.storage import open_storage

    data = open_storage("fashion-mnist", {"limit": None if holdout else limit,
                                          "val_limit": val_limit},
                        "classification", TEST_FRACTION, SPLIT_SEED, [])
    x, y = data.train.fetch(data.train_index, None)
    if holdout:
        n = len(y) - holdout
        keep = n if limit is None else min(limit, n)
        return Dataset(x[:keep], y[:keep], x[n:], y[n:], (1, 28, 28), 10)
    xv, yv = data.val.fetch(data.val_index, None)
    return Dataset(x, y, xv, yv, (1, 28, 28), 10)


def build(model: str, dataset_name: str, seed: int) -> nn.Module:
    from spartan_service.zoo import build_model

    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; use one of {', '.join(MODELS)}")
    data = dataset(dataset_name)
    torch.manual_seed(seed)
    arch, kwargs = MODELS[model]
    if arch == "cnnbn":
        c, h, _ = data.input_shape
        return CNNBN(c, h, data.num_classes)
    return build_model(arch, kwargs, data.input_shape, data.num_classes)


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch: int = 1000) -> float:
    """Test accuracy in percent, in batches (a CNN's activations of 10k images at once would
    take gigabytes)."""
    model.eval()
    correct = sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum())
                  for i in range(0, len(y), batch))
    return 100.0 * correct / len(y)


def train(setting: Setting, costs: Any = None, budget: float | None = None) -> RunResult:
    """Train one setting; `costs` / `budget` (fraction of the total cost) override the default
    one-per-weight cost and 1 - sparsity (the latency-aware runs pass a cost model's)."""
    import time

    s = setting
    if s.method != "dense" and not 0.0 < s.sparsity < 1.0 and budget is None:
        raise ValueError(f"sparsity must lie in (0, 1) for method {s.method!r}")
    data = dataset(s.dataset)
    model = build(s.model, s.dataset, s.seed)
    n = len(data.y_train)
    steps = math.ceil(n / BATCH) * s.epochs
    sp = None
    if s.method != "dense":
        cfg = SparsifierConfig(method=s.method,  # type: ignore[arg-type]
                               budget=budget if budget is not None else 1.0 - s.sparsity,
                               block=s.block, **dict(s.overrides))
        sp = Sparsifier(model, cfg, steps, costs=costs)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    gen = torch.Generator().manual_seed(s.seed)
    t0 = time.perf_counter()
    model.train()
    for _ in range(s.epochs):
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, BATCH):
            idx = order[i:i + BATCH]
            loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sp is not None:
                sp.step()
    density = 1.0
    if sp is not None:
        rep = sp.finalize()
        density = sum(r.kept_weights for r in rep.layers) / sum(r.weights for r in rep.layers)
    acc = accuracy(model, data.x_val, data.y_val)
    return RunResult(s, acc, density, time.perf_counter() - t0, model)


def with_seed(setting: Setting, seed: int) -> Setting:
    return dataclasses.replace(setting, seed=seed)
