"""Training recipes of `training`: mixed precision, the optimiser's parameter groups, the
learning-rate schedule and gradient clipping.

- precision "bf16": autocast to bfloat16 on CPU or GPU (no scaler: bf16 has fp32's range);
  "fp16": autocast to float16 with a gradient scaler, GPU only. Masks stay exact: the
  Sparsifier's parametrisation multiplies the fp32 weight by the mask before autocast casts
  the product, and the cast of an exact zero is an exact zero.
- weight decay skips parameters of fewer than 2 dims (biases, norm scales and shifts) unless
  `decay_norms_and_biases`, as in most transformer recipes (Loshchilov & Hutter's AdamW with
  the BERT / GPT-2 exclusions).
- lr rises linearly from 0 over `lr_warmup_frac` of the steps, then follows `lr_schedule`
  (cosine: half a cosine to 0 over the remaining steps).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from spartan_service.jobs.spec import TrainingSpec

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def param_groups(model: nn.Module, weight_decay: float, decay_all: bool
                 ) -> list[dict[str, Any]]:
    params = [p for p in model.parameters() if p.requires_grad]
    if decay_all or not weight_decay:
        return [{"params": params, "weight_decay": weight_decay}]
    decay = [p for p in params if p.dim() >= 2]
    rest = [p for p in params if p.dim() < 2]
    return [g for g in ({"params": decay, "weight_decay": weight_decay},
                        {"params": rest, "weight_decay": 0.0}) if g["params"]]


def make_optimizer(model: nn.Module, t: TrainingSpec) -> torch.optim.Optimizer:
    groups = param_groups(model, t.weight_decay, t.decay_norms_and_biases)
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum)
    return torch.optim.AdamW(groups, lr=t.lr)


def lr_at(t: TrainingSpec, step: int, total: int) -> float:
    """The learning rate of optimiser step `step` (0-based) of `total`."""
    warmup = int(t.lr_warmup_frac * total)
    if step < warmup:
        return t.lr * (step + 1) / warmup
    if t.lr_schedule == "cosine":
        rest = max(total - warmup, 1)
        return t.lr * 0.5 * (1.0 + math.cos(math.pi * min((step - warmup) / rest, 1.0)))
    return t.lr


class Precision:
    """Autocast for the forward pass, and the backward / optimiser step that goes with it."""

    def __init__(self, precision: str, device: torch.device) -> None:
        if precision == "fp16" and device.type != "cuda":
            raise ValueError("training.precision 'fp16' needs a GPU (its gradient scaler is "
                             "CUDA's) and this job runs on the CPU; use 'bf16'")
        self.precision, self.device = precision, device
        self.scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=_DTYPES[self.precision])

    def backward(self, loss: Tensor) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def step(self, optimizer: torch.optim.Optimizer, params: Iterable[Tensor],
             clip: float | None) -> None:
        """Unscale, clip the global gradient norm to `clip`, step. With fp16, a step whose
        gradients overflowed is skipped by the scaler (and the scale lowered)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], clip)
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        return {} if self.scaler is None else {"scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
