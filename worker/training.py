"""The training stage of a job: epochs of mini-batches, the Sparsifier stepped after each
optimiser step, progress for the lease, metrics records, resumable checkpoints.

The loop reads a `JobPlan` (model, optimiser, Sparsifier, batches, task, total steps) and saves
checkpoints through the `Checkpoints` object it is given; it never calls back into the runner.
Resuming is exact: the batch order of an epoch depends on (seed, epoch) only, and a checkpoint
holds the model, optimizer, Sparsifier, RNG and loop state, so an attempt that resumes at step
s continues as the interrupted one would have.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from jobs.spec import TrainingSpec
from worker.lease import Lease, finite
from worker.objectives import evaluate
from worker.plan import JobPlan

log = logging.getLogger(__name__)


@dataclass
class LoopState:
    """Everything about the loop that is not a tensor; stored as JSON in checkpoints."""

    step: int = 0
    epoch: int = 0  # epochs completed
    epoch_loss: float = 0.0  # sums over the current epoch's examples
    epoch_score: float = 0.0  # the task's summed score (correct predictions)
    epoch_seen: int = 0
    window_loss: float = 0.0  # sums since the last metrics record
    window_score: float = 0.0
    window_seen: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per epoch
    records: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl lines
    initial_accuracy: float | None = None
    train_seconds: float = 0.0  # over all attempts
    ranks_compared: int = 0  # checkpoints at which every rank's masks and weights matched

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LoopState:
        legacy = {"epoch_correct": "epoch_score", "window_correct": "window_score"}
        return cls(**{legacy.get(k, k): v for k, v in data.items()})

    def metrics_jsonl(self) -> bytes:
        """The records as metrics.jsonl (strict JSON, one record a line)."""
        return "".join(json.dumps(finite(r), allow_nan=False) + "\n"
                       for r in self.records).encode()


class Checkpoints(Protocol):
    def save(self, state: LoopState) -> None:
        """Persist the loop at `state` (with the model, optimiser and Sparsifier)."""
        ...


def lr_at(t: TrainingSpec, step: int, total: int) -> float:
    if t.lr_schedule == "cosine":
        return t.lr * 0.5 * (1.0 + math.cos(math.pi * min(step / total, 1.0)))
    return t.lr


class Loop:
    """Runs the steps of one job from `state.step` to the end; raises StopRequested."""

    def __init__(self, plan: JobPlan, lease: Lease, checkpoints: Checkpoints,
                 progress_interval_s: float) -> None:
        self.plan, self.t, self.lease = plan, plan.training, lease
        self.model, self.optimizer, self.sparsifier = plan.model, plan.optimizer, plan.sparsifier
        self.task, self.total_steps = plan.task, plan.total_steps
        self.steps_per_epoch = plan.batches.steps_per_epoch
        self.checkpoints = checkpoints
        self.interval = progress_interval_s
        self.log_every = max(1, min(self.steps_per_epoch, self.total_steps // 200))
        self._started = (time.perf_counter(), 0)  # (clock, step) when this attempt began
        self._base_seconds = 0.0

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

    def progress(self, state: LoopState, phase: str | None, loss: float | None,
                 acc: float | None) -> dict[str, Any]:
        elapsed = time.perf_counter() - self._started[0]
        done = state.step - self._started[1]
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
        t, model, task = self.t, self.model, self.task
        self._started = (time.perf_counter(), state.step)
        self._base_seconds = state.train_seconds
        self.lease.update(self.progress(state, None, None, None))
        last_report = 0.0
        device = self.plan.device
        # Sums since the last sync, kept on the device so that a step never waits for it.
        self._loss = torch.zeros((), device=device)
        self._score = torch.zeros((), device=device)
        model.train()
        while state.epoch < t.epochs:
            first = state.step - state.epoch * self.steps_per_epoch
            for b, (xb, yb) in enumerate(self.plan.batches.epoch(state.epoch, first), first):
                lr = lr_at(t, state.step, self.total_steps)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                out = self.plan.forward_model(xb)
                loss = task.loss(out, yb)
                n = task.examples(yb)
                self.optimizer.zero_grad(set_to_none=True)
                if self.plan.ranks.world > 1:
                    n = self.backward_shard(out, loss, n)
                else:
                    loss.backward()
                self.optimizer.step()
                if self.sparsifier is not None:
                    self.step_sparsifier(state.step, loss)
                state.step += 1
                with torch.no_grad():
                    if self.plan.ranks.world > 1:
                        self.reduce_sums(out, yb, loss)
                    else:
                        self._loss += loss.detach() * n
                        self._score += task.score(out, yb)
                state.epoch_seen += n
                state.window_seen += n
                epoch_end = b == self.steps_per_epoch - 1
                now = time.perf_counter()
                logged = state.step % self.log_every == 0
                if logged or epoch_end or now - last_report > self.interval:
                    self.sync(state)
                    if logged:
                        state.records.append(self.record(state, lr))
                        state.window_loss, state.window_score, state.window_seen = 0.0, 0.0, 0
                    self.lease.update(self.progress(
                        state, None, state.epoch_loss / max(state.epoch_seen, 1),
                        state.epoch_score / max(state.epoch_seen, 1)))
                    last_report = now
                self.lease.check()
                if epoch_end:
                    self.end_epoch(state)
                elif state.step % t.checkpoint_every == 0:
                    self.save(state)
        return state

    def backward_shard(self, out: Tensor, loss: Tensor, n: int) -> int:
        """Backward of this rank's share of the global batch; returns the global batch size.

        DDP averages the ranks' gradients; each rank's mean loss is scaled by its share of the
        global batch (times the world size), so the average is the gradient of the global
        batch's mean loss even when an epoch's last batch does not split evenly: the same
        update as one process taking the whole batch."""
        world = self.plan.ranks.world
        total = getattr(self.plan.batches, "last_global", n * world)
        if n:
            (loss * (world * n / total)).backward()
        else:  # an empty share (a last batch smaller than the world): zero gradients, but
            (out.sum() * 0.0).backward()  # DDP still needs every rank's all-reduce
        return int(total)

    def reduce_sums(self, out: Tensor, target: Tensor, loss: Tensor) -> None:
        """The global batch's summed loss and score on every rank (one small all-reduce)."""
        import torch.distributed as dist

        n = self.task.examples(target)
        local = torch.zeros(2, dtype=torch.float64, device=out.device)
        if n:
            local[0] = loss.detach().double() * n
            local[1] = self.task.score(out, target).double()
        dist.all_reduce(local)
        self._loss += local[0].to(self._loss.dtype)
        self._score += local[1].to(self._score.dtype)

    def step_sparsifier(self, step: int, loss: Tensor) -> None:
        assert self.sparsifier is not None
        loss = loss.detach()
        try:
            self.sparsifier.step()
        except ValueError:
            # Non-finite weights reach the mask solver before the loss is next synced.
            weights_ok = all(bool(torch.isfinite(p).all()) for p in self.model.parameters())
            if bool(torch.isfinite(loss)) and weights_ok:
                raise
            raise ValueError(f"training diverged at step {step + 1} (the loss became "
                             f"{float(loss)}); try a lower training.lr") from None

    def sync(self, state: LoopState) -> None:
        """Move the device-side sums into the state (one device sync)."""
        loss, score = float(self._loss), float(self._score)
        self._loss.zero_()
        self._score.zero_()
        if not math.isfinite(loss):
            raise ValueError(f"training diverged by step {state.step} (the loss became "
                             f"{loss}); try a lower training.lr")
        state.epoch_loss += loss
        state.window_loss += loss
        state.epoch_score += score
        state.window_score += score

    def record(self, state: LoopState, lr: float) -> dict[str, Any]:
        fraction, beta = self.schedule_now(state.step)
        seen = max(state.window_seen, 1)
        return {"kind": "step", "step": state.step, "epoch": state.epoch + 1,
                "loss": state.window_loss / seen, "accuracy": state.window_score / seen,
                "lr": lr, "budget_fraction": fraction, "beta": beta}

    def end_epoch(self, state: LoopState) -> None:
        val_acc: float | None = None
        val_loss: float | None = None
        if self.plan.ranks.leader:  # rank 0 reports for all; the others go on to the next step
            val_acc, val_loss = evaluate(self.model, self.task, self.plan.batches.validation())
        fraction, beta = self.schedule_now(state.step)
        rec: dict[str, Any] = {"kind": "epoch", "step": state.step, "epoch": state.epoch + 1,
               "loss": state.epoch_loss / max(state.epoch_seen, 1),
               "accuracy": state.epoch_score / max(state.epoch_seen, 1),
               "val_loss": val_loss, "val_accuracy": val_acc, "budget_fraction": fraction,
               "beta": beta}
        if val_acc is not None:
            log.info("epoch %d/%d: loss %.4f acc %.4f val_acc %.4f", rec["epoch"],
                     self.t.epochs, rec["loss"], rec["accuracy"], val_acc)
        state.history.append(rec)
        state.records.append(rec)
        state.epoch += 1
        state.epoch_loss, state.epoch_score, state.epoch_seen = 0.0, 0.0, 0
        self.lease.update(self.progress(state, None, rec["loss"], rec["accuracy"]),
                          metrics=self.metrics(state))
        self.save(state)

    def save(self, state: LoopState) -> None:
        self.sync(state)
        state.train_seconds = self._base_seconds + time.perf_counter() - self._started[0]
        self.checkpoints.save(state)
