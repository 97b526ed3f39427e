"""Checkpoints as one safetensors file: tensors in its body, everything else as JSON in its
metadata. Nothing is pickled, so torch.load is never needed to resume.

Nested state (an optimizer's or a Sparsifier's state_dict) is flattened: each tensor is stored
under its path ("optimizer/state/0/exp_avg") and replaced in the JSON tree by a reference;
tuples and dicts with non-string keys (optimizer state is keyed by int) are tagged so that
they come back as they were. The file is written atomically and overwritten in place, so a
retried attempt never sees half a checkpoint.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import torch
from safetensors.torch import load, save
from torch import Tensor

from spartan_service.jobs import report
from spartan_service.jobs.artifacts import ArtifactStore
from spartan_service.worker.plan import JobPlan
from spartan_service.worker.ranks import (
    broadcast_json,
    broadcast_module,
    broadcast_optimizer,
    compare_ranks,
)
from spartan_service.worker.training import LoopState

log = logging.getLogger(__name__)

NAME = "checkpoint.safetensors"
FORMAT = "spartan-checkpoint/1"
_TENSOR, _TUPLE, _ITEMS = "__tensor__", "__tuple__", "__items__"


def encode(obj: Any, path: str, tensors: dict[str, Tensor]) -> Any:
    """JSON-able tree of `obj`; its tensors go to `tensors` (CPU copies) under their path."""
    if isinstance(obj, Tensor):
        key = path or "root"
        if key in tensors:
            raise ValueError(f"two tensors under the checkpoint path {key!r}")
        t = obj.detach()
        tensors[key] = t.to("cpu", copy=True).contiguous() if t.device.type == "cpu" else t.cpu()
        return {_TENSOR: key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and not {_TENSOR, _TUPLE, _ITEMS} & set(obj):
            return {k: encode(v, f"{path}/{k}", tensors) for k, v in obj.items()}
        return {_ITEMS: [[encode(k, f"{path}/k{i}", tensors), encode(v, f"{path}/{k}", tensors)]
                         for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, tuple):
        return {_TUPLE: [encode(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [encode(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return obj.item()
    raise ValueError(f"cannot checkpoint a {type(obj).__name__} at {path!r}")


def decode(tree: Any, tensors: dict[str, Tensor]) -> Any:
    """Inverse of encode."""
    if isinstance(tree, dict):
        if set(tree) == {_TENSOR}:
            return tensors[tree[_TENSOR]]
        if set(tree) == {_TUPLE}:
            return tuple(decode(v, tensors) for v in tree[_TUPLE])
        if set(tree) == {_ITEMS}:
            return {decode(k, tensors): decode(v, tensors) for k, v in tree[_ITEMS]}
        return {k: decode(v, tensors) for k, v in tree.items()}
    if isinstance(tree, list):
        return [decode(v, tensors) for v in tree]
    return tree


def dumps(state: dict[str, Any]) -> bytes:
    """Bytes of a checkpoint file holding `state` (a dict of nested state_dicts)."""
    tensors: dict[str, Tensor] = {}
    tree = encode(state, "", tensors)
    return save(tensors, metadata={"format": FORMAT, "state": json.dumps(tree)})


def save_checkpoint(artifacts: ArtifactStore, job_id: str, state: dict[str, Any]) -> None:
    """Into the job's private space: never listed or served as an artifact."""
    artifacts.write_private(job_id, NAME, dumps(state))


def _metadata(data: bytes) -> dict[str, str]:
    """The __metadata__ of a safetensors file (an 8-byte header length, then a JSON header)."""
    if len(data) < 8:
        raise ValueError(f"{NAME} is truncated")
    size = int.from_bytes(data[:8], "little")
    try:
        header = json.loads(data[8:8 + size])
    except ValueError:
        raise ValueError(f"{NAME} has an unreadable header") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else {}


def load_checkpoint(artifacts: ArtifactStore, job_id: str,
                    device: torch.device | str = "cpu") -> dict[str, Any] | None:
    """The state of a job's checkpoint with its tensors on `device`, or None without one."""
    data = artifacts.read_private(job_id, NAME)
    if data is None:
        return None
    meta = _metadata(data)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{NAME} is not a checkpoint of this version: {meta.get('format')!r}")
    tensors = {k: v.to(device) for k, v in load(data).items()}
    return decode(json.loads(meta["state"]), tensors)


class Checkpointer:
    """Saves and restores one job's training state; what the training stage is handed."""

    def __init__(self, artifacts: ArtifactStore, plan: JobPlan) -> None:
        self.artifacts, self.plan, self.job_id = artifacts, plan, plan.job.id

    def save(self, state: LoopState) -> None:
        p = self.plan
        if p.ranks.world > 1:
            # Every rank's masks and weights, compared at every checkpoint: a job never trains
            # on with ranks that disagree (spartan.distributed keeps them identical).
            compare_ranks(p.model, p.sparsifier, p.ranks, p.device, state.step)
            state.ranks_compared += 1
        if not p.ranks.leader:  # rank 0 writes for all (their states are the same)
            return
        # The curve so far, for the dashboard while the job runs (rewritten whole: idempotent).
        self.artifacts.write_bytes(self.job_id, report.METRICS, state.metrics_jsonl())
        rng: dict[str, Any] = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        twin = p.twin
        save_checkpoint(self.artifacts, self.job_id, {
            "total_steps": p.total_steps, "loop": state.to_json(),
            "model": p.model.state_dict(), "optimizer": p.optimizer.state_dict(),
            "sparsifier": None if p.sparsifier is None else p.sparsifier.state_dict(),
            "precision": p.precision.state_dict(), "rng": rng,
            "twin": None if twin is None else {
                "model": twin.model.state_dict(), "optimizer": twin.optimizer.state_dict(),
                "precision": twin.precision.state_dict()},
        })

    def restore(self) -> LoopState | None:
        """The loop state of the last checkpoint, with model, optimiser, Sparsifier and RNG
        put back; None on a first attempt or without a checkpoint. Under several ranks, rank 0
        reads the checkpoint and broadcasts what it restored (spartan_service.worker.ranks)."""
        p = self.plan
        if p.ranks.world == 1:
            return self._restore()
        state = self._restore() if p.ranks.leader else None
        loop = broadcast_json(None if state is None else state.to_json(), p.ranks, p.device)
        if loop is None:
            return None
        broadcast_module(p.model)
        if p.sparsifier is not None:
            p.sparsifier.broadcast()
        broadcast_optimizer(p.optimizer, p.ranks, p.device)
        return LoopState.from_json(loop)

    def _restore(self) -> LoopState | None:
        p = self.plan
        if p.job.attempts <= 1:
            return None
        ckpt = load_checkpoint(self.artifacts, self.job_id, p.device)
        if ckpt is None:
            log.info("job %s: attempt %d starts over (no checkpoint)", self.job_id,
                     p.job.attempts)
            return None
        if ckpt["total_steps"] != p.total_steps:
            raise ValueError(f"checkpoint is for {ckpt['total_steps']} steps, this run has "
                             f"{p.total_steps}")
        p.model.load_state_dict(ckpt["model"])
        p.optimizer.load_state_dict(ckpt["optimizer"])
        if p.sparsifier is not None:
            p.sparsifier.load_state_dict(ckpt["sparsifier"])
        p.precision.load_state_dict(ckpt.get("precision") or {})
        if p.twin is not None:
            if not ckpt.get("twin"):
                raise ValueError("the checkpoint holds no dense twin (baseline 'train')")
            p.twin.model.load_state_dict(ckpt["twin"]["model"])
            p.twin.optimizer.load_state_dict(ckpt["twin"]["optimizer"])
            p.twin.precision.load_state_dict(ckpt["twin"].get("precision") or {})
        torch.set_rng_state(ckpt["rng"]["cpu"].cpu())
        cuda = ckpt["rng"].get("cuda")
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
        return LoopState.from_json(ckpt["loop"])



def discard_checkpoint(artifacts: ArtifactStore, job_id: str) -> None:
    """Remove a job's checkpoint once its result is recorded."""
    artifacts.delete_private(job_id, NAME)
