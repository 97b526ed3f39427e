"""The first stage of a job: everything it needs, computed once, as typed data.

`make_plan` validates the stored spec, resolves uploads, loads the data, builds the model
(with initial weights), plans the costs (block costs computed once), attaches the Sparsifier
and makes the optimiser. Training and publishing read the plan; nothing recomputes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from jobs.models import Job
from jobs.spec import JobSpec, TrainingSpec
from jobs.store import JobStore
from jobs.uploads import upload_path
from spartan import Sparsifier, SparsifierConfig
from worker.batches import Batches, ShardedBatches, TensorBatches
from worker.costs import CostPlan, plan_costs
from worker.data import Dataset, load_dataset
from worker.models import build_model, load_weights
from worker.objectives import Task, make_task
from worker.ranks import SINGLE, Ranks, device_of


@dataclass(frozen=True)
class JobPlan:
    job: Job
    spec: JobSpec
    device: torch.device
    data: Dataset  # on `device`
    batches: Batches
    task: Task
    model: nn.Module  # on `device`, the Sparsifier attached
    optimizer: torch.optim.Optimizer
    costs: CostPlan
    sparsifier: Sparsifier | None  # None for method "dense"
    total_steps: int
    example: Tensor  # one training batch of inputs: cost probes and speedup timing
    ranks: Ranks = SINGLE  # this process's place among the job's ranks
    # Under several ranks, `model` wrapped in DistributedDataParallel: what training calls.
    # Evaluation, checkpoints and export use `model` itself.
    train_model: nn.Module | None = None

    @property
    def forward_model(self) -> nn.Module:
        return self.train_model if self.train_model is not None else self.model

    @property
    def training(self) -> TrainingSpec:
        return self.spec.training


def pick_device(requested: str) -> torch.device:
    if requested == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if requested == "cuda":
        raise ValueError("training.device is 'cuda' but this worker has no CUDA device; use "
                         "device 'auto' or 'cpu', or run a worker on a GPU machine")
    return torch.device("cpu")


def make_optimizer(model: nn.Module, t: TrainingSpec) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)


def make_sparsifier(spec: JobSpec, model: nn.Module, costs: CostPlan, total_steps: int,
                    example: Tensor | None = None) -> Sparsifier | None:
    s = spec.sparsity
    if s.method == "dense":
        return None
    config = SparsifierConfig(
        method=s.method, budget=costs.budget_fraction, block=(s.block[0], s.block[1]),
        allocation=s.allocation, beta_init=s.beta_init, beta_final=s.beta_final,
        warmup_frac=s.warmup_frac, finetune_frac=s.finetune_frac, schedule=s.schedule,
        prefixes=tuple(s.prefixes) if s.prefixes else None, structure=s.structure,
        min_keep=s.min_keep)
    if s.structure == "channels":
        return Sparsifier(model, config, total_steps, costs.costs, example_inputs=example)
    return Sparsifier(model, config, total_steps, costs.costs)


def resolve_upload(store: JobStore, uploads_dir: Path, job: Job, upload_id: str | None,
                   kind: str | None) -> Path | None:
    """The file of one of the job's tenant's uploads; ValueError when it is not there."""
    if not upload_id:
        return None
    row = store.get_upload(upload_id, tenant=job.tenant)
    if row is None:
        raise ValueError(f"upload '{upload_id}' not found")
    if kind is not None and row.kind != kind:
        raise ValueError(f"upload '{upload_id}' is a .{row.kind} file; a .{kind} is needed")
    path = upload_path(uploads_dir, upload_id, row.kind)
    if not path.is_file():
        raise ValueError(f"the file of upload '{upload_id}' is missing from the upload store")
    return path


def make_plan(job: Job, store: JobStore, uploads_dir: Path, ranks: Ranks = SINGLE) -> JobPlan:
    """The job's plan; with several ranks, every rank makes the same one (data, model, costs
    and Sparsifier alike), trains its share of each batch and wraps the model in DDP."""
    spec = JobSpec.model_validate(job.spec)
    t = spec.training
    device = pick_device(t.device)
    if ranks.world > 1 and device.type == "cuda":
        device = device_of(ranks, "cuda")  # one GPU per rank
    torch.manual_seed(t.seed)
    data = load_dataset(spec.data.dataset, spec.data.kwargs, spec.data.val_fraction, t.seed,
                        upload=resolve_upload(store, uploads_dir, job, spec.data.upload, None)
                        ).to(device)
    model = build_model(spec.model.arch, spec.model.kwargs, data.input_shape, data.num_classes)
    weights = resolve_upload(store, uploads_dir, job, spec.model.weights, "safetensors")
    if weights is not None:
        load_weights(model, weights)
    model.to(device)
    tensors = TensorBatches(data, t.batch_size, t.seed)
    batches: Batches = (ShardedBatches(tensors, ranks.rank, ranks.world) if ranks.world > 1
                        else tensors)
    total = batches.steps_per_epoch * t.epochs
    example = data.x_train[:t.batch_size]
    costs = plan_costs(spec, model, example[:2], store, job.tenant)
    sparsifier = make_sparsifier(spec, model, costs, total, example[:2])
    train_model = None
    if ranks.world > 1:  # attached first, then wrapped: masks stay identical on every rank
        train_model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = make_optimizer(model, t)  # after the Sparsifier, the same way on every attempt
    return JobPlan(job=job, spec=spec, device=device, data=data, batches=batches,
                   task=make_task(), model=model, optimizer=optimizer, costs=costs,
                   sparsifier=sparsifier, total_steps=total, example=example, ranks=ranks,
                   train_model=train_model)
