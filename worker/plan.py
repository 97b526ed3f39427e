"""The first stage of a job: everything it needs, computed once, as typed data.

`make_plan` validates the stored spec, resolves uploads, loads the data, builds the model
(with initial weights), plans the costs (block costs computed once), attaches the Sparsifier
and makes the optimiser. Training and publishing read the plan; nothing recomputes it.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from spartan import Sparsifier, SparsifierConfig
from spartan_service.jobs import catalog, datapaths
from spartan_service.jobs.models import Job
from spartan_service.jobs.settings import Settings
from spartan_service.jobs.spec import JobSpec, TrainingSpec
from spartan_service.jobs.store import JobStore
from spartan_service.jobs.upload_store import StoredUpload, UploadStore
from spartan_service.worker.batches import Batches, ShardedBatches, TensorBatches
from spartan_service.worker.costs import CostPlan, plan_costs
from spartan_service.worker.data import load_dataset
from spartan_service.worker.objectives import Task, make_task
from spartan_service.worker.ranks import SINGLE, Ranks, device_of
from spartan_service.worker.recipes import Precision, make_optimizer
from spartan_service.worker.storage import open_storage
from spartan_service.zoo import build_model, hf, load_weights


@dataclass
class Track:
    """A model with its optimiser and precision: the sparse model, or its dense twin."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    precision: Precision


@dataclass(frozen=True)
class DataInfo:
    """What the report and the model need to know of the data."""

    input_shape: tuple[int, ...] | None  # one example's; None for text
    outputs: int  # classes, regression targets, or 0 for causal_lm
    train_examples: int
    val_examples: int
    text: bool
    resident_bytes: int  # what the worker holds in memory (streamed data: little)

    @property
    def num_classes(self) -> int:
        return self.outputs


@dataclass(frozen=True)
class JobPlan:
    job: Job
    spec: JobSpec
    device: torch.device
    data: DataInfo
    batches: Batches
    task: Task
    model: nn.Module  # on `device`, the Sparsifier attached
    optimizer: torch.optim.Optimizer
    precision: Precision
    costs: CostPlan
    sparsifier: Sparsifier | None  # None for method "dense"
    twin: Track | None  # the dense twin of baseline "train"
    baseline: str  # "train", "evaluate" or "none" (resolved)
    total_steps: int
    example: Tensor  # one training batch of model inputs: cost probes and speedup timing
    ranks: Ranks = SINGLE  # this process's place among the job's ranks
    example_mask: Tensor | None = None  # text: the example's attention mask (padding is 0)
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


def make_sparsifier(spec: JobSpec, model: nn.Module, costs: CostPlan, total_steps: int,
                    example: Tensor | None = None) -> Sparsifier | None:
    s = spec.sparsity
    if s.method == "dense":
        return None
    config = SparsifierConfig(
        method=s.method, budget=costs.budget_fraction, block=(s.block[0], s.block[1]),
        allocation=s.allocation, beta_init=s.beta_init, beta_final=s.beta_final,
        warmup_frac=s.warmup_frac, finetune_frac=s.finetune_frac, schedule=s.schedule,
        prefixes=_prefixes(spec, costs), structure=s.structure,
        min_keep=s.min_keep)
    if s.structure == "channels":
        sparsifier = Sparsifier(model, config, total_steps, costs.costs, example_inputs=example)
        check_floors(sparsifier, config)
        return sparsifier
    return Sparsifier(model, config, total_steps, costs.costs)


def check_floors(sparsifier: Any, config: SparsifierConfig) -> None:
    """Fail before training when min_keep's per-layer floors alone cost more than the budget
    (the job could only end over its promise), naming the largest min_keep that fits."""
    kept = sparsifier.floor_fraction()
    if kept <= config.budget * (1 + 1e-9):
        return
    lo, hi = 0, round(config.min_keep * 100)  # in hundredths; the floors grow with min_keep
    if sparsifier.floor_fraction(0.0) > config.budget:
        hint = ""  # one item per layer group is already too much
    else:
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if sparsifier.floor_fraction(mid / 100) <= config.budget \
                else (lo, mid)
        hint = f"; min_keep {lo / 100:g} fits"
    raise ValueError(f"sparsity.min_keep {config.min_keep:g}: the per-layer floors alone keep "
                     f"{kept:.1%} of the masked layers' cost, above the budget's "
                     f"{config.budget:.1%}{hint}")


def _prefixes(spec: JobSpec, costs: CostPlan) -> tuple[str, ...] | None:
    """The weights to mask: the spec's prefixes, less the layers the cost plan keeps dense."""
    s = spec.sparsity
    if costs.dense_layers:
        assert costs.costs is not None
        return tuple(costs.costs)  # exactly the weights the plan costs
    return tuple(s.prefixes) if s.prefixes else None


def resolve_upload(store: JobStore, settings: Settings, job: Job, upload_id: str | None,
                   kind: str | None) -> StoredUpload | None:
    """One of the job's tenant's uploads, to open; ValueError when it is not there."""
    if not upload_id:
        return None
    row = store.get_upload(upload_id, tenant=job.tenant)
    if row is None:
        raise ValueError(f"upload '{upload_id}' not found")
    if kind is not None and row.kind != kind:
        raise ValueError(f"upload '{upload_id}' is a .{row.kind} file; a .{kind} is needed")
    uploads = UploadStore(settings.artifacts_dir)
    if not uploads.exists(upload_id):
        raise ValueError(f"the file of upload '{upload_id}' is missing from the upload store")
    return StoredUpload(uploads, upload_id, row.kind)


def load_data(spec: JobSpec, job: Job, store: JobStore, settings: Settings,
              device: torch.device, tokenizer: Any, ranks: Ranks
              ) -> tuple[DataInfo, Batches, Tensor, Tensor | None]:
    """The job's batches (this rank's share of each global batch), streamed from storage or
    held in memory, and the inputs of the first global batch (the same on every rank) with
    their attention mask (text only)."""
    d, t = spec.data, spec.training
    if d.dataset in catalog.STORAGE_DATASETS:
        stream = open_storage(d.dataset, d.kwargs, t.task, d.val_fraction, t.seed,
                              settings.roots(), tokenizer,
                              settings.data_dir.resolve() / "cache" / "datasets")
        info = DataInfo(stream.input_shape, stream.outputs, len(stream.train_index),
                        len(stream.val_index), stream.text, stream.resident_bytes())
        example, mask = example_inputs(stream.batches(t.batch_size, t.seed, device))
        return info, stream.batches(t.batch_size, t.seed, device, t.loader_workers,
                                    ranks.rank, ranks.world), example, mask
    upload = resolve_upload(store, settings, job, d.upload, None)
    data = load_dataset(d.dataset, d.kwargs, d.val_fraction, t.seed, upload=upload,
                        task=t.task).to(device)
    info = DataInfo(data.input_shape, data.num_classes, len(data.y_train), len(data.y_val),
                    False, sum(t.numel() * t.element_size() for t in (data.x_train, data.x_val)))
    tensors = TensorBatches(data, t.batch_size, t.seed)
    batches: Batches = (ShardedBatches(tensors, ranks.rank, ranks.world) if ranks.world > 1
                        else tensors)
    return info, batches, data.x_train[:t.batch_size], None


def example_inputs(batches: Batches) -> tuple[Tensor, Tensor | None]:
    """The model inputs of the first training batch as one tensor (token ids for text), and
    for text their attention mask."""
    inputs, _ = next(iter(batches.epoch(0)))
    if isinstance(inputs, dict):
        return inputs["input_ids"], inputs.get("attention_mask")
    return inputs, None


def load_model_and_example(spec: JobSpec, job: Job, store: JobStore, settings: Settings,
                           device: torch.device, ranks: Ranks = SINGLE
                           ) -> tuple[nn.Module, Tensor, DataInfo, Batches, Tensor | None]:
    """The job's model (weights loaded, on `device`) and data: its info, batches, and the
    first global batch's inputs with their attention mask (text only). Profile jobs use it
    too (ProfileSpec.job_view), so a profile sees the model and inputs a job would."""
    t = spec.training
    roots = settings.roots()
    datapaths.check_spec(spec, roots, look=True)  # the worker's own view of the storage
    tokenizer = None
    if catalog.is_hf(spec.model.arch) and catalog.text_data(spec.data.dataset):
        tokenizer = hf.load_tokenizer(hf.model_dir(spec.model.arch[3:], roots))
    data, batches, example, example_mask = load_data(spec, job, store, settings, device,
                                                     tokenizer, ranks)
    model = build_model(spec.model.arch, spec.model.kwargs, data.input_shape, data.outputs,
                        t.task, data.text, roots,
                        None if tokenizer is None else tokenizer.pad_token_id)
    weights = resolve_upload(store, settings, job, spec.model.weights, "safetensors")
    if weights is not None:
        load_weights(model, weights)
    return model.to(device), example, data, batches, example_mask


def make_plan(job: Job, store: JobStore, settings: Settings, ranks: Ranks = SINGLE
              ) -> JobPlan:
    """The job's plan; with several ranks, every rank makes the same one (data, model, costs
    and Sparsifier alike), trains its share of each batch and wraps the model in DDP."""
    spec = JobSpec.model_validate(job.spec)
    t = spec.training
    device = pick_device(t.device)
    if ranks.world > 1 and device.type == "cuda":
        device = device_of(ranks, "cuda")  # one GPU per rank
    precision = Precision(t.precision, device)
    torch.manual_seed(t.seed)
    model, example, data, batches, example_mask = load_model_and_example(
        spec, job, store, settings, device, ranks)
    baseline = spec.resolved_baseline()
    twin = None
    if baseline == "train":  # the same initial weights, before the Sparsifier attaches
        dense = copy.deepcopy(model)
        twin = Track(dense, make_optimizer(dense, t), Precision(t.precision, device))
    per_epoch = math.ceil(batches.steps_per_epoch / t.grad_accum)
    total = per_epoch * t.epochs if t.max_steps is None else min(per_epoch * t.epochs,
                                                                 t.max_steps)
    costs = plan_costs(spec, model, example[:2], store, job.tenant)
    sparsifier = make_sparsifier(spec, model, costs, total, example[:2])
    train_model = None
    if ranks.world > 1:  # attached first, then wrapped: masks stay identical on every rank
        train_model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = make_optimizer(model, t)  # after the Sparsifier, the same way on every attempt
    return JobPlan(job=job, spec=spec, device=device, data=data, batches=batches,
                   task=make_task(t.task, t.label_smoothing), model=model,
                   optimizer=optimizer, precision=precision, costs=costs,
                   sparsifier=sparsifier, twin=twin, baseline=baseline, total_steps=total,
                   example=example, ranks=ranks, train_model=train_model,
                   example_mask=example_mask)
