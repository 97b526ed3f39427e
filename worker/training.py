"""The training stage of a job: epochs of mini-batches, the Sparsifier stepped after each
optimiser step, progress for the lease, metrics records, resumable checkpoints.

The loop reads a `JobPlan` (model, optimiser, Sparsifier, batches, task, recipe, total steps)
and saves checkpoints through the `Checkpoints` object it is given; it never calls back into
the runner. A step is one optimiser step: `grad_accum` micro-batches, each forward (under
autocast with a mixed precision) and backward, then clipping, the optimiser, and the
Sparsifier once. With `baseline` "train", the plan's dense twin takes the same batches beside
the sparse model. Resuming is exact: the batch order of an epoch depends on (seed, epoch) only,
and a checkpoint holds the models, optimisers, Sparsifier, scaler, RNG and loop state, so an
attempt that resumes at step s continues as the interrupted one would have.

Statistics are summed on the device (the task's vector, the loss times its count) and moved to
the state only when a record or a progress report needs them: a step never waits for a sync.
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

from spartan_service.worker.lease import Lease, finite
from spartan_service.worker.objectives import evaluate, forward
from spartan_service.worker.plan import JobPlan, Track
from spartan_service.worker.recipes import lr_at

log = logging.getLogger(__name__)


@dataclass
class LoopState:
    """Everything about the loop that is not a tensor; stored as JSON in checkpoints."""

    step: int = 0  # optimiser steps done
    epoch: int = 0  # epochs completed
    epoch_loss: float = 0.0  # loss x count, summed over the current epoch
    epoch_stats: list[float] = field(default_factory=list)  # the task's statistics, summed
    window_loss: float = 0.0  # the same since the last metrics record
    window_stats: list[float] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per epoch
    records: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl lines
    initial_accuracy: float | None = None  # the task's metric before training
    train_seconds: float = 0.0  # over all attempts
    last_eval: dict[str, Any] = field(default_factory=dict)  # the latest validation record
    ranks_compared: int = 0  # checkpoints at which every rank's masks and weights matched

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LoopState:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def metrics_jsonl(self) -> bytes:
        """The records as metrics.jsonl (strict JSON, one record a line)."""
        return "".join(json.dumps(finite(r), allow_nan=False) + "\n"
                       for r in self.records).encode()


class Checkpoints(Protocol):
    def save(self, state: LoopState) -> None:
        """Persist the loop at `state` (with the model, optimiser and Sparsifier)."""
        ...


def _add(a: list[float], b: list[float]) -> list[float]:
    return [x + y for x, y in zip(a, b, strict=True)] if a else list(b)


class Loop:
    """Runs the steps of one job from `state.step` to the end; raises StopRequested."""

    def __init__(self, plan: JobPlan, lease: Lease, checkpoints: Checkpoints,
                 progress_interval_s: float) -> None:
        self.plan, self.t, self.lease = plan, plan.training, lease
        self.model, self.optimizer, self.sparsifier = plan.model, plan.optimizer, plan.sparsifier
        self.task, self.total_steps = plan.task, plan.total_steps
        self.precision, self.twin = plan.precision, plan.twin
        self.batches_per_epoch = plan.batches.steps_per_epoch
        self.accum = self.t.grad_accum
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / self.accum)
        self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        self.checkpoints = checkpoints
        self.interval = progress_interval_s
        self.log_every = max(1, min(self.steps_per_epoch, self.total_steps // 200))
        self._started = (time.perf_counter(), 0)  # (clock, step) when this attempt began
        self._base_seconds = 0.0
        self._sums: Tensor | None = None  # [loss x count, *task stats] since the last sync

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
        metric = self.task.metric
        val = state.last_eval.get(f"val_{metric}")
        out = {
            "step": state.step, "total_steps": self.total_steps,
            "epoch": min(state.epoch + 1, self.epochs), "epochs": self.epochs,
            "phase": phase or self.phase(state.step), "loss": loss, "metric": metric,
            "accuracy": acc, "val_accuracy": val, metric: acc, f"val_{metric}": val,
            "budget_fraction": fraction, "beta": beta, "steps_per_s": rate,
            "eta_s": (self.total_steps - state.step) / rate if rate else None,
        }
        if self.twin is not None:
            out["dense_val_" + metric] = state.last_eval.get(f"dense_val_{metric}")
        return out

    def metrics(self, state: LoopState) -> dict[str, Any]:
        return {"history": state.history[-500:], **(state.history[-1] if state.history else {})}

    def run(self, state: LoopState) -> LoopState:
        self._started = (time.perf_counter(), state.step)
        self._base_seconds = state.train_seconds
        self.lease.update(self.progress(state, None, None, None))
        self._last_report = 0.0
        for model in self.models():
            model.train()
        while state.step < self.total_steps:
            epoch = state.step // self.steps_per_epoch
            state.epoch = epoch
            first = (state.step - epoch * self.steps_per_epoch) * self.accum
            micro: list[tuple[Any, Tensor]] = []
            for b, batch in enumerate(self.plan.batches.epoch(epoch, first), first):
                micro.append(batch)
                epoch_end = b == self.batches_per_epoch - 1
                if len(micro) < self.accum and not epoch_end:
                    continue
                self.step(state, micro)
                micro = []
                self.after_step(state, epoch_end)
                if state.step >= self.total_steps:
                    break
            if state.step >= self.total_steps and state.epoch < self.epochs and \
                    state.step % self.steps_per_epoch:
                self.end_epoch(state)  # max_steps ended the run mid-epoch
        return state

    def models(self) -> list[torch.nn.Module]:
        return [self.model] + ([self.twin.model] if self.twin is not None else [])

    def step(self, state: LoopState, micro: list[tuple[Any, Tensor]]) -> None:
        """One optimiser step over the micro-batches (their mean gradient)."""
        lr = lr_at(self.t, state.step, self.total_steps)
        tracks = [Track(self.plan.forward_model, self.optimizer, self.precision)]
        if self.twin is not None:
            tracks.append(self.twin)
        for track in tracks:
            for group in track.optimizer.param_groups:
                group["lr"] = lr
            track.optimizer.zero_grad(set_to_none=True)
        sums: Tensor | None = None
        sparse_loss = None
        world = self.plan.ranks.world
        for xb, yb in micro:
            for i, track in enumerate(tracks):
                with track.precision.autocast():
                    out = forward(track.model, xb)
                    loss = self.task.loss(out, yb) if len(yb) else out.sum() * 0.0
                if world > 1 and i == 0:
                    loss = self.shard_loss(out, loss, len(yb))
                track.precision.backward(loss / len(micro) if len(micro) > 1 else loss)
                if i == 0:
                    sparse_loss = loss.detach()
                    with torch.no_grad():
                        if world == 1:
                            self.accumulate(out.detach(), yb, loss.detach())
                        else:
                            row = self.row(out.detach(), yb, loss.detach())
                            sums = row if sums is None else sums + row
        if sums is not None:
            import torch.distributed as dist

            dist.all_reduce(sums)  # the global batch's sums on every rank (one small message)
            self._sums = sums if self._sums is None else self._sums + sums
        for track in tracks:
            track.precision.step(track.optimizer, track.model.parameters(), self.t.grad_clip)
        if self.sparsifier is not None and sparse_loss is not None:
            self.step_sparsifier(state.step, sparse_loss)
        state.step += 1
        self._lr = lr

    def accumulate(self, out: Tensor, target: Tensor, loss: Tensor) -> None:
        """Add one (micro-)batch's [loss x count, *the task's statistics] to the sums, in
        place: the row `row` makes, at two device operations instead of six."""
        stats = self.task.stats(out, target)
        if not len(target):
            return
        if self._sums is None:
            self._sums = torch.zeros(1 + stats.numel(), dtype=torch.float64,
                                     device=stats.device)
        self._sums[1:].add_(stats)
        self._sums[:1].addcmul_(loss.reshape(1), stats[-1:])

    def row(self, out: Tensor, target: Tensor, loss: Tensor) -> Tensor:
        """[loss x count, *the task's statistics] of one (micro-)batch, on the device."""
        stats = self.task.stats(out, target)
        if not len(target):  # an empty share of a last, small global batch
            return torch.zeros(1 + stats.numel(), dtype=torch.float64, device=stats.device)
        return torch.cat([(loss.double() * stats[-1]).reshape(1), stats])

    def shard_loss(self, out: Tensor, loss: Tensor, n: int) -> Tensor:
        """This rank's loss, scaled so that DDP's average of the ranks' gradients is the
        gradient of the global batch's mean loss, also when an epoch's last batch does not
        split evenly: the same update as one process taking the whole batch. (For causal_lm
        the ranks are weighted by examples, not tokens.)"""
        world = self.plan.ranks.world
        total = getattr(self.plan.batches, "last_global", n * world) or n * world
        if n:
            return loss * (world * n / total)
        return out.sum() * 0.0  # zero gradients, but DDP still needs every rank's all-reduce

    def after_step(self, state: LoopState, epoch_end: bool) -> None:
        t = self.t
        now = time.perf_counter()
        logged = state.step % self.log_every == 0
        if logged or epoch_end or now - self._last_report > self.interval:
            self.sync(state)
            if logged:
                state.records.append(self.record(state))
                state.window_loss, state.window_stats = 0.0, []
            self.lease.update(self.progress(state, None, *self.means(state.epoch_loss,
                                                                     state.epoch_stats)))
            self._last_report = now
        self.lease.check()
        if t.eval_every and state.step % t.eval_every == 0:
            self.evaluate(state)
        if epoch_end:
            self.end_epoch(state)
        elif state.step % t.checkpoint_every == 0:
            self.save(state)

    def means(self, loss: float, stats: list[float]) -> tuple[float | None, float | None]:
        """(mean loss, the task's metric) of summed statistics."""
        if not stats or not stats[-1]:
            return None, None
        return loss / stats[-1], self.task.value(stats)

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
        if self._sums is None:
            return
        values = self._sums.tolist()
        self._sums = None
        loss, stats = values[0], values[1:]
        if not math.isfinite(loss):
            raise ValueError(f"training diverged by step {state.step} (the loss became "
                             f"{loss}); try a lower training.lr")
        state.epoch_loss += loss
        state.window_loss += loss
        state.epoch_stats = _add(state.epoch_stats, stats)
        state.window_stats = _add(state.window_stats, stats)

    def record(self, state: LoopState) -> dict[str, Any]:
        fraction, beta = self.schedule_now(state.step)
        loss, value = self.means(state.window_loss, state.window_stats)
        return {"kind": "step", "step": state.step, "epoch": state.epoch + 1, "loss": loss,
                "accuracy": value, self.task.metric: value, "lr": self._lr,
                "budget_fraction": fraction, "beta": beta}

    def validate(self) -> dict[str, Any]:
        """Validation metric and loss of the model (and of the dense twin); under several
        ranks rank 0 evaluates for all, the others go on to the next step."""
        metric = self.task.metric
        if not self.plan.ranks.leader:
            return {"val_loss": None, "val_accuracy": None, f"val_{metric}": None}
        value, loss = evaluate(self.model, self.task, self.plan.batches.validation(),
                               self.precision.autocast)
        out: dict[str, Any] = {"val_loss": loss, "val_accuracy": value, f"val_{metric}": value}
        if self.twin is not None:
            dense, dense_loss = evaluate(self.twin.model, self.task,
                                         self.plan.batches.validation(),
                                         self.twin.precision.autocast)
            out |= {f"dense_val_{metric}": dense, "dense_val_loss": dense_loss}
        return out

    def evaluate(self, state: LoopState) -> None:
        """A validation pass between epochs (training.eval_every)."""
        rec = {"kind": "eval", "step": state.step, "epoch": state.epoch + 1, **self.validate()}
        state.records.append(rec)
        state.last_eval = rec
        log.info("step %d: val %s %s", state.step, self.task.metric,
                 rec[f"val_{self.task.metric}"])

    def end_epoch(self, state: LoopState) -> None:
        self.sync(state)
        fraction, beta = self.schedule_now(state.step)
        loss, value = self.means(state.epoch_loss, state.epoch_stats)
        val = self.validate()
        rec: dict[str, Any] = {"kind": "epoch", "step": state.step, "epoch": state.epoch + 1,
                               "loss": loss, "accuracy": value, self.task.metric: value, **val,
                               "budget_fraction": fraction, "beta": beta}
        log.info("epoch %d/%d: loss %s %s %s val %s", rec["epoch"], self.epochs, loss,
                 self.task.metric, value, val["val_accuracy"])
        state.history.append(rec)
        state.records.append(rec)
        state.last_eval = rec
        state.epoch += 1
        state.epoch_loss, state.epoch_stats = 0.0, []
        self.lease.update(self.progress(state, None, loss, value), metrics=self.metrics(state))
        self.save(state)

    def save(self, state: LoopState) -> None:
        self.sync(state)
        state.train_seconds = self._base_seconds + time.perf_counter() - self._started[0]
        self.checkpoints.save(state)
