"""The job spec: what a client submits. Pydantic v2, no torch; unknown fields are refused."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from spartan_service.jobs import catalog
from spartan_service.jobs.fields import INT_MAX, FiniteFloat, JsonDict, Name, Prefix, Ref, Tag, Text

ALLOWED_BLOCKS = {(1, 1), (2, 2), (4, 4), (8, 8), (16, 16), (32, 32)}


def known_block(value: tuple[int, int]) -> tuple[int, int]:
    if tuple(value) not in ALLOWED_BLOCKS:
        allowed = ", ".join(f"[{r}, {c}]" for r, c in sorted(ALLOWED_BLOCKS))
        raise ValueError(f"block {list(value)} is not supported; use one of {allowed}")
    return value


# A sparsity block (rows, columns), for training and profile jobs alike.
Block = Annotated[tuple[int, int], AfterValidator(known_block)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(_Strict):
    arch: Text = Field(
        default="mlp",
        description="Built-in architecture, 'torchvision:NAME', 'timm:NAME', 'hf:NAME_OR_PATH' "
        "(a Hugging Face model folder under the data roots, or a name in the worker's local "
        "Hugging Face cache; never downloaded), or a factory registered under the "
        "'spartan.models' entry-point group.",
        examples=["mlp"],
    )
    kwargs: JsonDict = Field(default_factory=dict, description="Arguments of the factory.")
    weights: Ref | None = Field(
        default=None, description="Id of an uploaded .safetensors file with initial weights."
    )

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, value: str) -> str:
        catalog.check_model(value)
        return value

    @model_validator(mode="after")
    def _known_kwargs(self) -> ModelSpec:
        catalog.model_kwargs(self.arch, self.kwargs)
        return self


class DataSpec(_Strict):
    dataset: Text = Field(
        default="digits",
        description="Built-in dataset, 'upload' (with upload=ID, an .npz/.safetensors holding x "
        "and y), data on shared storage under SPARTAN_DATA_ROOTS ('imagefolder', 'hf', 'npy'), "
        "'fashion-mnist', or a factory under the 'spartan.datasets' entry-point group.",
        examples=["digits"],
    )
    upload: Ref | None = Field(default=None, description="Upload id when dataset is 'upload'.")
    kwargs: JsonDict = Field(default_factory=dict)
    val_fraction: FiniteFloat = Field(default=0.2, gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _known_dataset(self) -> DataSpec:
        catalog.check_dataset(self.dataset)
        catalog.dataset_kwargs(self.dataset, self.kwargs)
        if self.dataset == "upload" and not self.upload:
            raise ValueError("dataset 'upload' needs 'upload': the id of an uploaded file")
        if self.dataset != "upload" and self.upload:
            raise ValueError("'upload' is only used with dataset 'upload'")
        return self


class SparsitySpec(_Strict):
    method: Literal["spartan", "dual_averaging", "imp", "dense"] = "spartan"
    budget: FiniteFloat = Field(
        default=0.1,
        gt=0.0,
        le=1.0,
        description="Fraction of the total cost the final model keeps (0.05 = 95% sparse with "
        "the default per-weight cost).",
    )
    block: Block = (1, 1)
    allocation: Text = Field(
        default="global",
        description="'global' (one budget over all layers), 'uniform', 'erk', or 'N:M' "
        "(e.g. '2:4': N kept in every group of M along the input dimension; block 1x1).",
        examples=["global", "2:4"],
    )
    prefixes: list[Prefix] | None = Field(
        default=None, max_length=256,
        description="Only parameters whose names start with one of these.",
    )
    schedule: Literal["linear", "cosine"] = "linear"
    beta_init: FiniteFloat = Field(default=1.0, gt=0.0)
    beta_final: FiniteFloat = Field(default=20.0, gt=0.0)
    warmup_frac: FiniteFloat = Field(default=0.2, ge=0.0, lt=1.0)
    finetune_frac: FiniteFloat = Field(default=0.2, ge=0.0, lt=1.0)
    structure: Literal["weights", "channels"] = Field(
        default="weights",
        description="'weights' (weights or blocks of them) or 'channels' (whole output "
        "channels, hidden units and attention heads, removed physically: model.sparse."
        "safetensors is then a smaller dense model).",
    )
    min_keep: FiniteFloat = Field(
        default=0.1, ge=0.0, le=1.0,
        description="With structure 'channels': the fraction of each layer's channels always "
        "kept (at least one).",
    )

    @field_validator("allocation")
    @classmethod
    def _known_allocation(cls, value: str) -> str:
        if value in ("global", "uniform", "erk"):
            return value
        match = re.fullmatch(r"(\d+):(\d+)", value)
        if not match or not 0 < int(match[1]) < int(match[2]) <= 64:
            raise ValueError(
                f"allocation {value!r} is not one of 'global', 'uniform', 'erk' or 'N:M' "
                "with 0 < N < M <= 64"
            )
        return value

    @model_validator(mode="after")
    def _phases_fit(self) -> SparsitySpec:
        if ":" in self.allocation and tuple(self.block) != (1, 1):
            raise ValueError(f"allocation {self.allocation!r} needs block [1, 1]")
        if self.warmup_frac + self.finetune_frac >= 1.0:
            raise ValueError("warmup_frac + finetune_frac must be < 1")
        if self.structure == "channels":
            if self.allocation not in ("global", "uniform"):
                raise ValueError(f"structure 'channels' takes allocation 'global' or "
                                 f"'uniform', not {self.allocation!r}")
            if tuple(self.block) != (1, 1):
                raise ValueError("structure 'channels' has no blocks: leave block at [1, 1]")
            if self.prefixes:
                raise ValueError("structure 'channels' does not take prefixes")
        return self


class CostSpec(_Strict):
    kind: Literal["params", "flops", "fitted"] = "params"
    id: Ref | None = Field(default=None, description="Stored cost-model id when kind is 'fitted'.")
    name: Name | None = Field(
        default=None,
        description="Stored cost-model name when kind is 'fitted' (instead of id): the worker "
        "takes the newest version measured on hardware like its own.",
    )
    budget_ms: FiniteFloat | None = Field(
        default=None,
        gt=0.0,
        description="Latency budget in the cost model's unit; replaces sparsity.budget.",
    )
    strict_hardware: bool = Field(
        default=False,
        description="Refuse to train (the job fails) when the cost model was measured on "
        "hardware other than the worker's; otherwise the job only gets a warning.",
    )

    @model_validator(mode="after")
    def _fitted_needs_id(self) -> CostSpec:
        if self.kind == "fitted" and not (self.id or self.name):
            raise ValueError("kind 'fitted' needs 'id' or 'name' of a stored cost model")
        if self.id and self.name:
            raise ValueError("give 'id' (one version) or 'name' (the version matching the "
                             "worker's hardware), not both")
        if self.kind != "fitted" and (self.id or self.name):
            raise ValueError("'id' and 'name' are only used with kind 'fitted'")
        if self.budget_ms is not None and self.kind != "fitted":
            raise ValueError("'budget_ms' needs a fitted latency cost model (kind 'fitted')")
        if self.strict_hardware and self.kind != "fitted":
            raise ValueError("'strict_hardware' is only used with kind 'fitted'")
        return self


class TrainingSpec(_Strict):
    epochs: int = Field(default=5, ge=1, le=10_000)
    batch_size: int = Field(default=64, ge=1, le=65_536)
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: FiniteFloat = Field(
        default=5e-3, gt=0.0, le=10.0,
        description="Learning rate; when left out, 5e-3 for adamw and 5e-2 for sgd.",
    )
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    momentum: FiniteFloat = Field(default=0.9, ge=0.0, lt=1.0)
    weight_decay: FiniteFloat = Field(default=0.0, ge=0.0, le=1e3)
    seed: int = Field(default=0, ge=0, le=INT_MAX)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    checkpoint_every: int = Field(default=200, ge=1, le=INT_MAX,
                                  description="Steps between checkpoints.")
    tensorboard: bool = Field(
        default=False, description="Also write TensorBoard event files beside metrics.jsonl "
        "(needs the worker's [tensorboard] extra).")
    task: Literal["classification", "regression", "causal_lm"] = Field(
        default="classification",
        description="classification (cross-entropy; accuracy), regression (MSE; R^2) or "
        "causal_lm (next-token cross-entropy; perplexity).",
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        default="fp32",
        description="bf16: autocast on CPU or GPU; fp16: autocast with a gradient scaler, GPU "
        "only.",
    )
    grad_accum: int = Field(default=1, ge=1, le=1024,
                            description="Micro-batches per optimiser (and Sparsifier) step.")
    grad_clip: FiniteFloat | None = Field(default=None, gt=0.0, le=1e6,
                                    description="Clip the gradients' global L2 norm to this.")
    label_smoothing: FiniteFloat = Field(default=0.0, ge=0.0, lt=1.0,
                                   description="Classification only.")
    lr_warmup_frac: FiniteFloat = Field(
        default=0.0, ge=0.0, lt=1.0,
        description="Fraction of the steps over which lr rises linearly from 0 before the "
        "schedule (cosine decays over the rest).",
    )
    decay_norms_and_biases: bool = Field(
        default=False, description="Apply weight_decay to norms and biases too (off: only to "
        "weights of 2+ dims).")
    eval_every: int | None = Field(
        default=None, ge=1, le=INT_MAX,
        description="Steps between validation passes (default: each epoch).")
    max_steps: int | None = Field(
        default=None, ge=1, le=INT_MAX,
        description="Stop after this many optimiser steps (large datasets).")
    loader_workers: int = Field(
        default=0, ge=0, le=32, description="DataLoader worker processes (0: load in the "
        "training process).")

    @model_validator(mode="before")
    @classmethod
    def _default_lr(cls, data: Any) -> Any:
        # SGD needs a larger step than AdamW; both defaults train the built-ins in a few epochs.
        if isinstance(data, dict) and data.get("lr") is None and data.get("optimizer") == "sgd":
            data = {**data, "lr": 5e-2}
        return data

    @model_validator(mode="after")
    def _recipe_fits(self) -> TrainingSpec:
        if self.precision == "fp16" and self.device == "cpu":
            raise ValueError("precision 'fp16' needs a GPU (its gradient scaler is CUDA's); "
                             "use 'bf16' on CPU")
        if self.label_smoothing and self.task != "classification":
            raise ValueError("label_smoothing applies to task 'classification' only")
        return self


MAX_PROCESSES = 64


class ResourcesSpec(_Strict):
    """How many ranks train the job (torch.distributed data parallelism; docs/distributed.md)."""

    processes: int = Field(
        default=1, ge=1, le=MAX_PROCESSES,
        description="Ranks on the worker that claims the job (one GPU each on the gpu queue). "
        "training.batch_size is the global batch, split evenly across them, so it must be "
        "divisible by processes.")
    nodes: int = Field(
        default=1, ge=1, le=MAX_PROCESSES,
        description="Machines the ranks span; only 1 is supported (docs/distributed.md).")

    @field_validator("nodes")
    @classmethod
    def _one_node(cls, value: int) -> int:
        if value != 1:
            raise ValueError(
                "nodes > 1 is not supported yet: a job's ranks run on the one worker that "
                "claims it (see docs/distributed.md for the multi-node design); use nodes 1 "
                "and up to that worker's processes")
        return value


class JobSpec(_Strict):
    """A sparse-training job. Only model, data, sparsity and training are usually given."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "model": {"arch": "mlp"},
                    "data": {"dataset": "digits"},
                    "sparsity": {"method": "spartan", "budget": 0.1},
                    "training": {"epochs": 2},
                }
            ]
        },
    )

    name: Name | None = None
    tags: list[Tag] = Field(default_factory=list, max_length=32)
    model: ModelSpec = Field(default_factory=ModelSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    sparsity: SparsitySpec = Field(default_factory=SparsitySpec)
    cost_model: CostSpec = Field(default_factory=CostSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    queue: Literal["auto", "cpu", "gpu"] = Field(
        default="auto", description="'auto': gpu when training.device is 'cuda', else cpu."
    )
    baseline: Literal["train", "evaluate", "none"] | None = Field(
        default=None,
        description="The dense reference in the report: 'train' a dense twin on the same "
        "batches, 'evaluate' the starting (pretrained) model before sparsifying, or 'none'. "
        "Default: 'evaluate' when the job starts from pretrained weights, else 'none'.",
    )

    @model_validator(mode="after")
    def _task_fits(self) -> JobSpec:
        task, dataset, arch = self.training.task, self.data.dataset, self.model.arch
        hf = catalog.is_hf(arch)
        if task == "causal_lm":
            if not hf:
                raise ValueError(f"training.task 'causal_lm' needs a Hugging Face causal "
                                 f"language model (model.arch 'hf:...'), not '{arch}'")
            if dataset not in ("hf", "npy"):
                raise ValueError(f"training.task 'causal_lm' needs text (dataset 'hf') or "
                                 f"token ids (dataset 'npy'), not dataset '{dataset}'")
        elif task == "regression" and dataset in catalog.CLASS_ONLY_DATASETS:
            raise ValueError(f"training.task 'regression' needs real-valued targets "
                                 f"(dataset 'npy', 'hf' or 'upload'), not dataset '{dataset}'")
        if catalog.text_data(dataset) and not hf:
            raise ValueError(f"dataset 'hf' holds text, which needs a Hugging Face model with "
                             f"its tokenizer (model.arch 'hf:...'), not '{arch}'")
        if self.baseline == "train" and self.resources.processes > 1:
            raise ValueError("baseline 'train' runs in one process: its dense twin is not "
                             "trained across ranks yet; use resources.processes 1, or "
                             "baseline 'evaluate' or 'none'")
        if self.baseline == "evaluate" and not self.starts_pretrained():
            raise ValueError("baseline 'evaluate' needs pretrained weights (model.weights, or "
                             "an 'hf:' model with pretrained true); use 'train' or 'none'")
        return self

    def starts_pretrained(self) -> bool:
        m = self.model
        return bool(m.weights) or (catalog.is_hf(m.arch) and m.kwargs.get("pretrained", True))

    def resolved_baseline(self) -> str:
        """The baseline that runs: 'none' for a dense job (it is its own reference)."""
        if self.sparsity.method == "dense":
            return "none"
        if self.baseline is not None:
            return self.baseline
        return "evaluate" if self.starts_pretrained() else "none"

    @field_validator("resources")
    @classmethod
    def _batch_splits(cls, value: ResourcesSpec, info: ValidationInfo) -> ResourcesSpec:
        training = info.data.get("training")
        if training is not None and training.batch_size % value.processes:
            raise ValueError(
                f"training.batch_size {training.batch_size} is the global batch, split evenly "
                f"across resources.processes {value.processes} ranks: make it a multiple of "
                f"{value.processes}")
        return value

    def warnings(self) -> list[str]:
        """Known before training: layers whose shape the block does not divide (they fall back
        to 1x1 blocks), for built-in models whose shapes are known without building them."""
        return catalog.block_problems(
            self.model.arch, self.model.kwargs, self.data.dataset, self.sparsity.block,
            self.sparsity.prefixes, data_kwargs=self.data.kwargs,
        )

    def resolved_queue(self) -> str:
        if self.queue != "auto":
            return self.queue
        return "gpu" if self.training.device == "cuda" else "cpu"
