"""The training stage's batches: fixed order per (seed, epoch), resumable mid-epoch."""

from __future__ import annotations

import torch

from spartan_service.worker.batches import TensorBatches
from spartan_service.worker.data import load_dataset


def test_an_epoch_resumed_mid_way_gives_the_same_batches() -> None:
    data = load_dataset("digits", {}, 0.2, seed=0)
    batches = TensorBatches(data, batch_size=100, seed=3)
    whole = list(batches.epoch(2))
    assert len(whole) == batches.steps_per_epoch == 15  # 1438 training examples
    tail = list(batches.epoch(2, start=9))
    assert len(tail) == 6
    for (x1, y1), (x2, y2) in zip(whole[9:], tail, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    other = next(batches.epoch(3))[1]
    assert not torch.equal(whole[0][1], other)  # each epoch is shuffled anew
    seen = torch.cat([y for _, y in whole])
    assert torch.equal(seen.sort().values, data.y_train.sort().values)  # every example once
    assert sum(len(y) for _, y in batches.validation()) == len(data.y_val)
