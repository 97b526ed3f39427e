"""The training loop of a job: epochs of shuffled mini-batches, the Sparsifier stepped after each
optimiser step, progress for the lease, metrics records, resumable checkpoints.

Resuming is exact: the batch order of an epoch is a function of (seed, epoch), and a checkpoint
holds the model, optimizer, Sparsifier, RNG and loop state, so an attempt that resumes at step
s continues as the interrupted one would have.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from jobs.spec import TrainingSpec
from worker.data import Dataset
from worker.lease import Lease

log = logging.getLogger(__name__)
EVAL_BATCH = 1024


@dataclass
class LoopState:
    """Everything about the loop that is not a tensor; stored as JSON in checkpoints."""

    step: int = 0
    epoch: int = 0  # epochs completed
    epoch_loss: float = 0.0  # sums over the current epoch's examples
    epoch_correct: int = 0
    epoch_seen: int = 0
    window_loss: float = 0.0  # sums since the last metrics record
    window_correct: int = 0
    window_seen: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per epoch
    records: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl lines
    initial_accuracy: float | None = None
    train_seconds: float = 0.0  # over all attempts


def pick_device(requested: str) -> torch.device:
    if requested == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if requested == "cuda":
        raise ValueError("training.device is 'cuda' but this worker has no CUDA device; use "
                         "device 'auto' or 'cpu', or run a worker on a GPU machine")
    return torch.device("cpu")


def total_steps(n_train: int, t: TrainingSpec) -> int:
    return math.ceil(n_train / t.batch_size) * t.epochs


def make_optimizer(model: nn.Module, t: TrainingSpec) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)


def lr_at(t: TrainingSpec, step: int, total: int) -> float:
    if t.lr_schedule == "cosine":
        return t.lr * 0.5 * (1.0 + math.cos(math.pi * min(step / total, 1.0)))
    return t.lr


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) in eval mode."""
    was_training = model.training
    model.eval()
    correct, loss = torch.zeros((), device=x.device), torch.zeros((), device=x.device)
    for i in range(0, len(y), EVAL_BATCH):
        out = model(x[i:i + EVAL_BATCH])
        loss += F.cross_entropy(out, y[i:i + EVAL_BATCH], reduction="sum")
        correct += (out.argmax(1) == y[i:i + EVAL_BATCH]).sum()
    model.train(was_training)
    return float(correct) / len(y), float(loss) / len(y)


class Loop:
    """Runs the steps of one job from `state.step` to the end; raises StopRequested."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 sparsifier: Any | None, data: Dataset, t: TrainingSpec, lease: Lease,
                 checkpoint: Any, progress_interval_s: float) -> None:
        self.model, self.optimizer, self.sparsifier = model, optimizer, sparsifier
        self.data, self.t, self.lease = data, t, lease
        self.checkpoint = checkpoint  # callable(LoopState) that saves one
        self.interval = progress_interval_s
        self.steps_per_epoch = math.ceil(len(data.y_train) / t.batch_size)
        self.total_steps = total_steps(len(data.y_train), t)
        self.log_every = max(1, min(self.steps_per_epoch, self.total_steps // 200))

    def schedule_now(self, step: int) -> tuple[float, float | None]:
        """(kept budget fraction, beta) at `step`."""
        sp = self.sparsifier
        if sp is None:
            return 1.0, None
        return float(sp.schedule.fraction(step)), float(sp.schedule.beta(step))

    def phase(self, step: int) -> str:
        """warmup (budget annealing), train, or finetune (masks frozen); dense jobs: train."""
        sp = self.sparsifier
        if sp is None:
            return "train"
        if step >= sp.schedule.freeze_step:
            return "finetune"
        return "warmup" if step < sp.schedule.warmup_steps else "train"

    def progress(self, state: LoopState, started: tuple[float, int], phase: str | None,
                 loss: float | None, acc: float | None) -> dict[str, Any]:
        elapsed = time.perf_counter() - started[0]
        done = state.step - started[1]
        rate = done / elapsed if elapsed > 0 and done > 0 else None
        fraction, beta = self.schedule_now(state.step)
        last = state.history[-1] if state.history else {}
        return {
            "step": state.step, "total_steps": self.total_steps,
            "epoch": min(state.epoch + 1, self.t.epochs), "epochs": self.t.epochs,
            "phase": phase or self.phase(state.step), "loss": loss, "accuracy": acc,
            "val_accuracy": last.get("val_accuracy"), "budget_fraction": fraction,
            "beta": beta, "steps_per_s": rate,
            "eta_s": (self.total_steps - state.step) / rate if rate else None,
        }

    def metrics(self, state: LoopState) -> dict[str, Any]:
        return {"history": state.history[-500:], **(state.history[-1] if state.history else {})}

    def run(self, state: LoopState) -> LoopState:
        t, data, model = self.t, self.data, self.model
        started = (time.perf_counter(), state.step)
        self._base_seconds = state.train_seconds
        last_report = 0.0
        device = data.x_train.device
        # Sums since the last sync, kept on the device so that a step never waits for it.
        self._loss = torch.zeros((), device=device)
        self._correct = torch.zeros((), device=device, dtype=torch.long)
        model.train()
        while state.epoch < t.epochs:
            order = self.order(state.epoch)
            first = state.step - state.epoch * self.steps_per_epoch
            for b in range(first, self.steps_per_epoch):
                idx = order[b * t.batch_size:(b + 1) * t.batch_size]
                xb, yb = data.x_train[idx], data.y_train[idx]
                lr = lr_at(t, state.step, self.total_steps)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                out = model(xb)
                loss = F.cross_entropy(out, yb)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                if self.sparsifier is not None:
                    self.step_sparsifier(state.step, loss)
                state.step += 1
                with torch.no_grad():
                    self._loss += loss.detach() * len(yb)
                    self._correct += (out.argmax(1) == yb).sum()
                state.epoch_seen += len(yb)
                state.window_seen += len(yb)
                epoch_end = b == self.steps_per_epoch - 1
                now = time.perf_counter()
                logged = state.step % self.log_every == 0
                if logged or epoch_end or now - last_report > self.interval:
                    self.sync(state)
                    if logged:
                        state.records.append(self.record(state, lr))
                        state.window_loss, state.window_correct, state.window_seen = 0.0, 0, 0
                    mean_loss = state.epoch_loss / max(state.epoch_seen, 1)
                    self.lease.update(self.progress(
                        state, started, None, mean_loss,
                        state.epoch_correct / max(state.epoch_seen, 1)))
                    last_report = now
                self.lease.check()
                if epoch_end:
                    self.end_epoch(state, started)
                elif state.step % t.checkpoint_every == 0:
                    self.save(state, started)
        return state

    def step_sparsifier(self, step: int, loss: Tensor) -> None:
        loss = loss.detach()
        try:
            self.sparsifier.step()  # type: ignore[union-attr]
        except ValueError:
            # Non-finite weights reach the mask solver before the loss is next synced.
            weights_ok = all(bool(torch.isfinite(p).all()) for p in self.model.parameters())
            if bool(torch.isfinite(loss)) and weights_ok:
                raise
            raise ValueError(f"training diverged at step {step + 1} (the loss became "
                             f"{float(loss)}); try a lower training.lr") from None

    def order(self, epoch: int) -> Tensor:
        gen = torch.Generator().manual_seed(self.t.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.data.y_train), generator=gen).to(self.data.y_train.device)

    def sync(self, state: LoopState) -> None:
        """Move the device-side sums into the state (one device sync)."""
        loss, correct = float(self._loss), int(self._correct)
        self._loss.zero_()
        self._correct.zero_()
        if not math.isfinite(loss):
            raise ValueError(f"training diverged by step {state.step} (the loss became "
                             f"{loss}); try a lower training.lr")
        state.epoch_loss += loss
        state.window_loss += loss
        state.epoch_correct += correct
        state.window_correct += correct

    def record(self, state: LoopState, lr: float) -> dict[str, Any]:
        fraction, beta = self.schedule_now(state.step)
        seen = max(state.window_seen, 1)
        return {"kind": "step", "step": state.step, "epoch": state.epoch + 1,
                "loss": state.window_loss / seen, "accuracy": state.window_correct / seen,
                "lr": lr, "budget_fraction": fraction, "beta": beta}

    def end_epoch(self, state: LoopState, started: tuple[float, int]) -> None:
        val_acc, val_loss = evaluate(self.model, self.data.x_val, self.data.y_val)
        fraction, beta = self.schedule_now(state.step)
        rec: dict[str, Any] = {"kind": "epoch", "step": state.step, "epoch": state.epoch + 1,
               "loss": state.epoch_loss / max(state.epoch_seen, 1),
               "accuracy": state.epoch_correct / max(state.epoch_seen, 1),
               "val_loss": val_loss, "val_accuracy": val_acc, "budget_fraction": fraction,
               "beta": beta}
        log.info("epoch %d/%d: loss %.4f acc %.4f val_acc %.4f", rec["epoch"], self.t.epochs,
                 rec["loss"], rec["accuracy"], val_acc)
        state.history.append(rec)
        state.records.append(rec)
        state.epoch += 1
        state.epoch_loss, state.epoch_correct, state.epoch_seen = 0.0, 0, 0
        self.lease.update(self.progress(state, started, None, rec["loss"], rec["accuracy"]),
                          metrics=self.metrics(state))
        self.save(state, started)

    def save(self, state: LoopState, started: tuple[float, int]) -> None:
        self.sync(state)
        state.train_seconds = self._base_seconds + time.perf_counter() - started[0]
        self.checkpoint(state)


def state_to_json(state: LoopState) -> dict[str, Any]:
    return dataclasses.asdict(state)


def state_from_json(data: dict[str, Any]) -> LoopState:
    return LoopState(**data)
