"""What the training loop optimises and reports, per task (`training.task` in later specs).

A `Task` turns a model's output and a batch's targets into the loss to minimise and a summable
score; the loop divides the summed score by the examples seen to report the task's metric
(accuracy for classification). New tasks (regression, causal language modelling) are one class
here and one entry in `TASKS`; the loop, the evaluation and the report do not change.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import torch
from torch import Tensor
from torch.nn import functional as F


class Task(Protocol):
    name: str
    metric: str  # what score / examples means, e.g. "accuracy"

    def loss(self, out: Tensor, target: Tensor) -> Tensor:
        """Mean loss over the batch (a scalar the optimiser minimises)."""
        ...

    def score(self, out: Tensor, target: Tensor) -> Tensor:
        """Sum over the batch of the per-example metric, as a device scalar (no sync)."""
        ...

    def examples(self, target: Tensor) -> int:
        """How many examples the loss and score of this batch average over."""
        ...


class Classification:
    name = "classification"
    metric = "accuracy"

    def loss(self, out: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(out, target)

    def score(self, out: Tensor, target: Tensor) -> Tensor:
        return (out.argmax(1) == target).sum()

    def examples(self, target: Tensor) -> int:
        return int(target.shape[0])


TASKS: dict[str, type[Task]] = {"classification": Classification}


def make_task(name: str = "classification") -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid: {', '.join(TASKS)}")
    return TASKS[name]()


@torch.no_grad()
def evaluate(model: torch.nn.Module, task: Task, batches: Iterable[tuple[Tensor, Tensor]]
             ) -> tuple[float, float]:
    """(metric, mean loss) over `batches` of (inputs, targets), in eval mode."""
    was_training = model.training
    model.eval()
    score = loss = None
    seen = 0
    for x, y in batches:
        out = model(x)
        n = task.examples(y)
        batch_loss = task.loss(out, y).detach() * n
        batch_score = task.score(out, y)
        loss = batch_loss if loss is None else loss + batch_loss
        score = batch_score if score is None else score + batch_score
        seen += n
    model.train(was_training)
    if not seen or loss is None or score is None:
        raise ValueError("no validation examples")
    return float(score) / seen, float(loss) / seen
