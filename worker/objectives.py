"""What the training loop optimises and reports, per task (`training.task`).

A `Task` turns a model's output and a batch's targets into the loss to minimise and a vector of
summable statistics, kept on the device (no sync per step); its metric is a function of the
summed statistics, so it is exact over any window of batches, a validation pass included:
- classification: cross-entropy (with label smoothing); accuracy = correct / examples;
- regression: mean squared error; R^2 = 1 - SSE / SST, SST from the targets' running sums;
- causal_lm: next-token cross-entropy (the targets are the inputs shifted by one, padding
  -100 ignored); perplexity = exp(mean token loss).
The last statistic is always the count the mean loss averages over (examples, or tokens).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from spartan_service.zoo.hf import logits

IGNORE = -100


class Task(Protocol):
    name: str
    metric: str  # the name of what value() gives: "accuracy", "r2", "perplexity"
    higher_is_better: bool

    def loss(self, out: Tensor, target: Tensor) -> Tensor:
        """Mean loss over the batch (a scalar the optimiser minimises)."""
        ...

    def stats(self, out: Tensor, target: Tensor) -> Tensor:
        """Summable statistics of the batch (float64, on the device); the last is the count
        the mean loss averages over."""
        ...

    def value(self, stats: Sequence[float]) -> float | None:
        """The metric from summed statistics; None when it is undefined (no examples)."""
        ...


class Classification:
    name, metric, higher_is_better = "classification", "accuracy", True

    def __init__(self, label_smoothing: float = 0.0) -> None:
        self.label_smoothing = label_smoothing

    def loss(self, out: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(out.float(), target, label_smoothing=self.label_smoothing)

    def stats(self, out: Tensor, target: Tensor) -> Tensor:
        correct = (out.argmax(1) == target).sum()
        return torch.stack([correct, torch.tensor(len(target), device=correct.device)]).double()

    def value(self, stats: Sequence[float]) -> float | None:
        return stats[0] / stats[-1] if stats[-1] else None


class Regression:
    name, metric, higher_is_better = "regression", "r2", True

    @staticmethod
    def _pred(out: Tensor, target: Tensor) -> Tensor:
        return out.float().reshape(target.shape)

    def loss(self, out: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(self._pred(out, target), target)

    def stats(self, out: Tensor, target: Tensor) -> Tensor:
        err = (self._pred(out, target) - target).double()
        t = target.double()
        return torch.stack([err.pow(2).sum(), t.sum(), t.pow(2).sum(),
                            torch.tensor(float(t.numel()), device=t.device, dtype=t.dtype)])

    def value(self, stats: Sequence[float]) -> float | None:
        sse, total, squares, n = stats
        sst = squares - total * total / n if n else 0.0
        return 1.0 - sse / sst if sst > 1e-12 else None


class CausalLM:
    name, metric, higher_is_better = "causal_lm", "perplexity", False

    @staticmethod
    def _shift(out: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        return out[:, :-1].reshape(-1, out.shape[-1]).float(), target[:, 1:].reshape(-1)

    def loss(self, out: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(*self._shift(out, target), ignore_index=IGNORE)

    def stats(self, out: Tensor, target: Tensor) -> Tensor:
        pred, tgt = self._shift(out, target)
        nll = F.cross_entropy(pred, tgt, ignore_index=IGNORE, reduction="sum")
        return torch.stack([nll.detach(), (tgt != IGNORE).sum()]).double()

    def value(self, stats: Sequence[float]) -> float | None:
        if not stats[-1]:
            return None
        return math.exp(min(stats[0] / stats[-1], 700.0))  # exp overflows past ~709


def make_task(name: str = "classification", label_smoothing: float = 0.0) -> Task:
    if name == "classification":
        return Classification(label_smoothing)
    if name == "regression":
        return Regression()
    if name == "causal_lm":
        return CausalLM()
    raise ValueError(f"unknown task {name!r}; valid: classification, regression, causal_lm")


def forward(model: nn.Module, inputs: Any) -> Tensor:
    """The model's prediction tensor for a batch's inputs (a tensor, or a dict of tensors
    passed by name: token ids and attention mask)."""
    out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
    return logits(out)


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, batches: Iterable[tuple[Any, Tensor]],
             autocast: Any = None) -> tuple[float | None, float]:
    """(metric, mean loss) over `batches` of (inputs, targets), in eval mode."""
    was_training = model.training
    model.eval()
    total: Tensor | None = None
    loss: Tensor | None = None
    try:
        for x, y in batches:
            if autocast is not None:
                with autocast():
                    out = forward(model, x)
            else:
                out = forward(model, x)
            stats = task.stats(out, y)
            batch_loss = task.loss(out, y).detach().double() * stats[-1]
            total = stats if total is None else total + stats
            loss = batch_loss if loss is None else loss + batch_loss
    finally:
        model.train(was_training)
    if total is None or loss is None or not float(total[-1]):
        raise ValueError("no validation examples")
    values = total.tolist()
    return task.value(values), float(loss) / values[-1]
