"""The structured benchmark's data, models and training loop (benchmarks.structured): Fashion-MNIST
from Debian's package (digits where it is absent), a CNN with BatchNorm beside the zoo's models,
and plain SGD training with an optional Sparsifier."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spartan import Sparsifier, SparsifierConfig
from spartan_service.zoo import build_model

FASHION = Path("/usr/share/datasets/fashion-mnist")


class CnnBn(nn.Module):
    """Conv + BatchNorm + ReLU stages, max-pooled, global average pool, linear head."""

    def __init__(self, in_ch: int, num_classes: int, channels: tuple[int, ...]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_ch
        for i, out in enumerate(channels):
            layers += [nn.Conv2d(c, out, 3, padding=1, bias=False), nn.BatchNorm2d(out),
                       nn.ReLU()]
            if i < len(channels) - 1:
                layers.append(nn.MaxPool2d(2))
            c = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).mean((2, 3)))


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_data(name: str, quick: bool, train_size: int | None = None
              ) -> tuple[str, Tensor, Tensor, Tensor, Tensor]:
    if name in ("auto", "fashion-mnist") and (FASHION / "train-images-idx3-ubyte.gz").exists():
        xtr = _idx(FASHION / "train-images-idx3-ubyte.gz")
        ytr = _idx(FASHION / "train-labels-idx1-ubyte.gz")
        xte = _idx(FASHION / "t10k-images-idx3-ubyte.gz")
        yte = _idx(FASHION / "t10k-labels-idx1-ubyte.gz")
        # the whole test set: 1000 images left about 1 point of noise per run (binomial)
        ntr, nte = (3000, 10000) if quick else (60000, 10000)
        ntr = train_size or ntr
        rng = np.random.default_rng(0)
        tr, te = rng.permutation(len(xtr))[:ntr], rng.permutation(len(xte))[:nte]
        def prep(x: np.ndarray) -> Tensor:
            return torch.tensor(x, dtype=torch.float32).unsqueeze(1) / 255.0
        return "fashion-mnist", prep(xtr[tr]), torch.tensor(ytr[tr], dtype=torch.long), \
            prep(xte[te]), torch.tensor(yte[te], dtype=torch.long)
    if name == "fashion-mnist":
        raise SystemExit(f"Fashion-MNIST not found under {FASHION}")
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    xt = torch.tensor(x / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)
    yt = torch.tensor(y, dtype=torch.long)
    return "digits", xt[:1400], yt[:1400], xt[1400:], yt[1400:]


def make(arch: str, shape: tuple[int, ...], quick: bool) -> nn.Module:
    if arch == "cnn_bn":
        return CnnBn(shape[0], 10, (32, 64, 128) if not quick else (32, 64, 96))
    if arch == "resnet":
        return build_model("resnet", {"width": 16, "depth": 8 if quick else 20}, shape, 10)
    return build_model("mlp", {"hidden": [512, 256]}, shape, 10)


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    model.eval()
    with torch.inference_mode():
        pred = torch.cat([model(x[i:i + 512]).argmax(1) for i in range(0, len(x), 512)])
    return float((pred == y).float().mean())


def train(model: nn.Module, data: tuple[Tensor, ...], epochs: int, seed: int,
          config: SparsifierConfig | None = None, costs: Any = None) -> Sparsifier | None:
    xtr, ytr = data[0], data[1]
    steps = epochs * ((len(xtr) + 63) // 64)
    gen = torch.Generator().manual_seed(seed)
    sp = None if config is None else Sparsifier(model, config, steps, costs=costs,
                                                example_inputs=xtr[:8])
    # one lr for dense and pruned runs: the dense reference continues at 2e-3 for as many
    # epochs as pruning takes (CNN at 50% latency, floor 0.5, seed 0: 85.0% at 1e-3, 86.4%)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(xtr), generator=gen)
        for i in range(0, len(xtr), 64):
            idx = order[i:i + 64]
            loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if sp is not None:
                sp.step()
    return sp
