"""Array datasets streamed from storage: memory-mapped .npy files and Debian's Fashion-MNIST.

Inputs are standardised per feature with the training split's mean and standard deviation,
computed in one streamed pass of bounded memory (chunks combined with Chan et al.'s pairwise
update); regression targets likewise. A batch with a NaN, an infinite value, or a class label
out of range fails the job with the file and the row.
"""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import numpy as np
import torch

from spartan_service.worker.loaders import Batch, NpyArray, NpyShards

Array = NpyArray | NpyShards

CHUNK_BYTES = 8 << 20  # float64 temporaries of 2-3x this: the pass adds ~60 MB at most


def feature_stats(array: Array, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and standard deviation (float32) of the rows at `index`, streamed."""
    rows = max(1, CHUNK_BYTES // max(array.row_bytes, 1))
    count, mean, m2 = 0, None, None
    for chunk in array.chunks(np.sort(index), rows):
        c = chunk.astype(np.float64).reshape(len(chunk), -1)
        n_b, mean_b = len(c), c.mean(axis=0)
        m2_b = ((c - mean_b) ** 2).sum(axis=0)
        if mean is None or m2 is None:
            count, mean, m2 = n_b, mean_b, m2_b
            continue
        delta, total = mean_b - mean, count + n_b
        mean = mean + delta * n_b / total
        m2 = m2 + m2_b + delta ** 2 * count * n_b / total
        count = total
    if mean is None or m2 is None or not np.all(np.isfinite(mean)):
        raise ValueError(f"{array.path.name}: no finite training rows to standardise with "
                         "(NaN or infinite values?)")
    std = np.sqrt(m2 / max(count, 1))
    std[std < 1e-8] = 1.0  # constant features stay at zero
    shape = array.shape[1:]
    return mean.astype(np.float32).reshape(shape), std.astype(np.float32).reshape(shape)


class NpySource:
    """Batches of memory-mapped x (and y) rows; token ids as they are for causal_lm."""

    augments = False

    def __init__(self, x: Array, y: Array | None, task: str, num_classes: int | None,
                 x_stats: tuple[np.ndarray, np.ndarray] | None,
                 y_stats: tuple[np.ndarray, np.ndarray] | None) -> None:
        self.x, self.y, self.task, self.num_classes = x, y, task, num_classes
        self.x_stats, self.y_stats = x_stats, y_stats
        # (x - mean) / std as one fused pass over the batch, x * (1 / std) + (-mean / std): the
        # same values to float32 rounding, at a third of the two passes' cost.
        self._scale: torch.Tensor | None = None
        self._shift: torch.Tensor | None = None
        if x_stats is not None:
            scale = (1.0 / x_stats[1]).astype(np.float32)
            self._scale = torch.from_numpy(scale)
            self._shift = torch.from_numpy((-x_stats[0] * scale).astype(np.float32))

    def __len__(self) -> int:
        return len(self.x)

    def fetch(self, index: np.ndarray, rng: np.random.Generator | None) -> Batch:
        xb = self.x.take(index)
        if self.task == "causal_lm":
            ids = torch.from_numpy(xb.astype(np.int64))
            return ids, ids  # the loss shifts the targets by one token
        # take() returned a copy: float32 rows are used as they are and standardised in place,
        # and one sum finds a NaN or infinity (each makes it non-finite) without a mask the
        # size of the batch (the mask is made only when the sum is not finite: a NaN, or a
        # huge finite batch overflowing float32); the batch costs what a plain loop's does.
        x = xb if xb.dtype == np.float32 else xb.astype(np.float32)
        xt = torch.from_numpy(x)
        if not math.isfinite(float(xt.sum())):
            bad = ~np.isfinite(x.reshape(len(x), -1)).all(1)
            if bad.any():
                row = int(index[np.flatnonzero(bad)[0]])
                raise ValueError(f"{self.x.path.name}: row {row} holds NaN or infinite values")
        if self._scale is not None and self._shift is not None:
            torch.addcmul(self._shift, xt, self._scale, out=xt)
        assert self.y is not None
        yb = self.y.take(index)
        if self.task == "classification":
            return xt, labels(yb, index, self.num_classes, self.y.path.name)
        y = yb.astype(np.float32)
        if not np.all(np.isfinite(y)):
            raise ValueError(f"{self.y.path.name}: a target near row {int(index[0])} is NaN or "
                             "infinite")
        if self.y_stats is not None:
            y = (y - self.y_stats[0]) / self.y_stats[1]
        return xt, torch.from_numpy(y)


def labels(y: np.ndarray, index: np.ndarray, num_classes: int | None, name: str) -> torch.Tensor:
    """Class labels as int64, each in [0, num_classes); ValueError naming the row."""
    bad = (y < 0) | (y >= (num_classes if num_classes is not None else np.inf))
    if y.dtype.kind == "f":
        bad |= y != np.round(y)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name}: row {int(index[i])} has label {y[i].item()}, not a class in "
                         f"0..{(num_classes or 0) - 1}")
    return torch.from_numpy(y.astype(np.int64))


class ImageArraySource:
    """uint8 images (N, C, H, W) held in memory (Fashion-MNIST's 47 MB), scaled to [0, 1]
    and standardised with per-channel statistics."""

    augments = False

    def __init__(self, images: np.ndarray, targets: np.ndarray, mean: np.ndarray,
                 std: np.ndarray) -> None:
        self.images, self.targets = images, targets
        self.mean = torch.from_numpy(mean.reshape(-1, 1, 1))
        self.std = torch.from_numpy(std.reshape(-1, 1, 1))

    def __len__(self) -> int:
        return len(self.targets)

    def fetch(self, index: np.ndarray, rng: np.random.Generator | None) -> Batch:
        x = torch.from_numpy(self.images[index]).float().div_(255.0)
        return (x - self.mean) / self.std, torch.from_numpy(self.targets[index].astype(np.int64))


def read_idx(path: Path, limit: int | None) -> np.ndarray:
    """An idx file (LeCun's MNIST format, gzipped), the first `limit` items."""
    try:
        with gzip.open(path, "rb") as f:
            magic = struct.unpack(">HBB", f.read(4))
            if magic[0] != 0 or magic[1] != 0x08:
                raise ValueError("not an unsigned-byte idx file")
            dims = struct.unpack(f">{magic[2]}I", f.read(4 * magic[2]))
            n = dims[0] if limit is None else min(limit, dims[0])
            item = int(np.prod(dims[1:], dtype=np.int64))
            raw = f.read(n * item)
    except (OSError, EOFError, struct.error) as exc:
        raise ValueError(f"{path}: cannot read it as a gzipped idx file ({exc})") from None
    if len(raw) != n * item:
        raise ValueError(f"{path} is truncated: {len(raw)} of {n * item} bytes")
    return np.frombuffer(raw, np.uint8).reshape(n, *dims[1:])


def fashion_mnist(folder: Path, limit: int | None, val_limit: int | None
                  ) -> tuple[ImageArraySource, ImageArraySource]:
    """Train (60k) and test (10k) sources from the package's four files; the validation
    split is the test set."""
    x = read_idx(folder / "train-images-idx3-ubyte.gz", limit)[:, None]
    y = read_idx(folder / "train-labels-idx1-ubyte.gz", limit)
    xv = read_idx(folder / "t10k-images-idx3-ubyte.gz", val_limit)[:, None]
    yv = read_idx(folder / "t10k-labels-idx1-ubyte.gz", val_limit)
    if len(x) != len(y) or len(xv) != len(yv):
        raise ValueError(f"{folder}: images and labels differ in number")
    if y.max(initial=0) > 9 or yv.max(initial=0) > 9:
        raise ValueError(f"{folder}: labels beyond the 10 Fashion-MNIST classes")
    total = squares = 0.0
    for i in range(0, len(x), 4096):  # sums in chunks: no float copy of the whole set
        chunk = x[i:i + 4096].astype(np.float64) / 255.0
        total, squares = total + chunk.sum(), squares + (chunk ** 2).sum()
    n = max(x.size, 1)
    mean = total / n
    std = max(np.sqrt(max(squares / n - mean ** 2, 0.0)), 1e-8)
    mean_a, std_a = np.array([mean], np.float32), np.array([std], np.float32)
    return ImageArraySource(x, y, mean_a, std_a), ImageArraySource(xv, yv, mean_a, std_a)
