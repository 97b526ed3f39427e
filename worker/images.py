"""Image folders: one subfolder of PNG / JPEG files per class, read with Pillow as batches are
fetched (never all at once), resized to size x size, scaled to [0, 1] and standardised with
per-channel statistics from a seeded sample of at most STATS_SAMPLE training images.

Augmentation (training only), written in torch since torchvision is optional: a random
size x size crop of the image padded by `crop_padding` pixels (reflection), and a horizontal
flip with probability 1/2, both drawn from the batch's own seeded generator.

An unreadable or truncated image fails the job with its path and Pillow's reason.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from spartan_service.jobs import datapaths
from spartan_service.worker.loaders import Batch

STATS_SAMPLE = 256


def list_images(root: Path, classes: list[str]) -> tuple[list[Path], np.ndarray]:
    """(files, labels) of an image folder, classes in the given order, files sorted."""
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        folder = root / name
        if not folder.is_dir():
            raise ValueError(f"{root}: class folder '{name}' is missing")
        found = sorted(e.path for e in os.scandir(folder)
                       if e.is_file() and e.name.lower().endswith(datapaths.IMAGE_SUFFIXES))
        files += [Path(f) for f in found]
        labels += [label] * len(found)
    return files, np.asarray(labels, dtype=np.int64)


def read_image(path: Path, size: int, channels: int) -> np.ndarray:
    """(C, size, size) uint8; ValueError naming the file when Pillow cannot read it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            image = opened.convert("L" if channels == 1 else "RGB")
            if image.size != (size, size):
                image = image.resize((size, size), Image.Resampling.BILINEAR)
            array = np.asarray(image, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(f"{path}: cannot read the image ({exc})") from None
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


class ImageSource:
    def __init__(self, files: list[Path], targets: np.ndarray, size: int, channels: int,
                 crop_padding: int, flip: bool, mean: np.ndarray | None = None,
                 std: np.ndarray | None = None) -> None:
        self.files, self.targets = files, targets
        self.size, self.channels = size, channels
        self.crop_padding, self.flip = crop_padding, flip
        self.augments = bool(crop_padding or flip)
        self.mean = torch.zeros(channels, 1, 1) if mean is None else torch.from_numpy(mean)
        self.std = torch.ones(channels, 1, 1) if std is None else torch.from_numpy(std)

    def __len__(self) -> int:
        return len(self.files)

    def pixels(self, index: np.ndarray) -> Tensor:
        """(N, C, size, size) in [0, 1]."""
        images = [read_image(self.files[i], self.size, self.channels) for i in index]
        return torch.from_numpy(np.stack(images)).float().div_(255.0)

    def channel_stats(self, index: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(index, min(len(index), STATS_SAMPLE), replace=False))
        x = self.pixels(sample)
        mean = x.mean(dim=(0, 2, 3)).reshape(-1, 1, 1)
        std = x.std(dim=(0, 2, 3)).clamp_min(1e-3).reshape(-1, 1, 1)
        return mean.numpy(), std.numpy()

    def fetch(self, index: np.ndarray, rng: np.random.Generator | None) -> Batch:
        x = self.pixels(index)
        if rng is not None:
            x = augment(x, rng, self.crop_padding, self.flip)
        return (x - self.mean) / self.std, torch.from_numpy(self.targets[index])


def augment(x: Tensor, rng: np.random.Generator, padding: int, flip: bool) -> Tensor:
    """Random crops of the padded batch and horizontal flips, per image."""
    n, _, h, w = x.shape
    if padding:
        mode = "reflect" if padding < min(h, w) else "replicate"
        padded = F.pad(x, (padding, padding, padding, padding), mode=mode)
        tops = rng.integers(0, 2 * padding + 1, n)
        lefts = rng.integers(0, 2 * padding + 1, n)
        x = torch.stack([padded[i, :, t:t + h, s:s + w]
                         for i, (t, s) in enumerate(zip(tops, lefts, strict=True))])
    if flip:
        flips = torch.from_numpy(rng.random(n) < 0.5)
        x = torch.where(flips[:, None, None, None], x.flip(3), x)
    return x
