"""Batches for the training loop: what one epoch iterates over, resumable mid-epoch.

The loop asks `epoch(e, start)` for the batches of epoch e from batch `start` on (a resumed
attempt starts mid-epoch) and `validation()` for the held-out set. `TensorBatches` serves a
dataset held in memory; a DataLoader-backed source (streamed from storage, sharded across
ranks) implements the same three members.

Resuming is exact: the order of an epoch is a function of (seed, epoch) only.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Protocol

import torch
from torch import Tensor

from spartan_service.worker.data import Dataset

Batch = tuple[Tensor, Tensor]  # (inputs, targets), on the training device
EVAL_BATCH = 1024


class Batches(Protocol):
    steps_per_epoch: int

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """Batches `start`, `start + 1`, ... of `epoch`, in that epoch's fixed order."""
        ...

    def validation(self) -> Iterator[Batch]:
        ...


class TensorBatches:
    """Shuffled mini-batches of a `Dataset` whose tensors are already on the device."""

    def __init__(self, data: Dataset, batch_size: int, seed: int) -> None:
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.steps_per_epoch = math.ceil(len(data.y_train) / batch_size)

    def order(self, epoch: int) -> Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.data.y_train), generator=gen).to(self.data.y_train.device)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        order, b = self.order(epoch), self.batch_size
        for i in range(start, self.steps_per_epoch):
            idx = order[i * b:(i + 1) * b]
            yield self.data.x_train[idx], self.data.y_train[idx]

    def validation(self) -> Iterator[Batch]:
        x, y = self.data.x_val, self.data.y_val
        for i in range(0, len(y), EVAL_BATCH):
            yield x[i:i + EVAL_BATCH], y[i:i + EVAL_BATCH]


class ShardedBatches:
    """One rank's share of each global batch of `inner`: the global batch is `batch_size`
    examples in the order a single process would take them, cut into `world` contiguous parts
    (sizes differ by at most one, in an epoch's last, partial batch). `last_global` is the size
    of the global batch the last yielded part came from (the loop scales the loss by it)."""

    def __init__(self, inner: TensorBatches, rank: int, world: int) -> None:
        self.inner, self.rank, self.world = inner, rank, world
        self.steps_per_epoch = inner.steps_per_epoch
        self.last_global = 0

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        data, b = self.inner.data, self.inner.batch_size
        order = self.inner.order(epoch)
        for i in range(start, self.steps_per_epoch):
            idx = order[i * b:(i + 1) * b]
            self.last_global = int(idx.numel())
            mine = torch.tensor_split(idx, self.world)[self.rank]
            yield data.x_train[mine], data.y_train[mine]

    def validation(self) -> Iterator[Batch]:
        return self.inner.validation()
