"""What a finished job publishes: the artifact names (declared here once) and report.json as a
typed model, shared by the worker that writes it and the API and clients that read it.

Every field is part of the report contract in DESIGN.md; extend the models, do not write
report keys anywhere else.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# Public artifacts of a job, listed and downloadable (GET /v1/jobs/{id}/artifacts).
MODEL = "model.safetensors"  # plain modules, exact zeros where masked
SPARSE_MODEL = "model.sparse.safetensors"  # spartan.load_sparse rebuilds the fast module
MASKS = "masks.safetensors"  # one bool mask per masked weight
METRICS = "metrics.jsonl"  # the training curve, one JSON record a line; rewritten while running
REPORT = "report.json"  # the Report below; written last, so its presence means "all written"
PUBLIC = (MODEL, SPARSE_MODEL, MASKS, METRICS, REPORT)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSection(_Section):
    arch: str
    input_shape: list[int] | None = Field(description="One example's shape; null for text.")
    num_classes: int = Field(description="Classes; regression: outputs; causal_lm: 0.")
    parameters: int = Field(description="All parameters of the model, masked or not.")


class DataSection(_Section):
    dataset: str
    train_examples: int
    val_examples: int


class LayerRow(BaseModel):
    """One masked weight, as spartan's LayerReport.to_dict() gives it."""

    model_config = ConfigDict(extra="allow")  # the Sparsifier may say more per layer

    name: str
    shape: list[int]
    block: list[int]
    blocks: int
    kept_blocks: int
    weights: int
    kept_weights: int
    cost: float
    kept_cost: float
    budget_share: float | None
    fallback: str | None = None
    kept_fraction: float


class SparsitySection(_Section):
    method: str
    allocation: str
    budget: float = Field(description="The Sparsifier's budget: kept fraction of masked cost.")
    step: int
    cost: float
    kept_cost: float
    kept_cost_fraction: float
    density: float = Field(description="Kept weights / masked weights, from the masks.")
    measured_density: float = Field(description="Nonzero weights / masked weights, counted in "
                                    "the written model.")
    fallbacks: list[str]
    layers: list[LayerRow]


class CostSection(_Section):
    """The cost model's prediction for the sparse model beside the budget, in its unit."""

    kind: str
    unit: str
    budget_fraction: float
    budget: float
    predicted: float
    dense: float
    fixed: float
    within_budget: bool
    predicted_vs_budget: float | None
    cost_model: dict[str, Any] | None = Field(
        default=None, description="The stored cost model used (kind 'fitted'): id, name, "
        "version, batch, hardware and fingerprint, the worker's, and whether they match.")


class AccuracySection(_Section):
    """The task's validation metric (accuracy, r2 or perplexity: see `metric`)."""

    sparse: float | None = Field(description="Final validation metric; null for dense jobs.")
    final: float | None
    dense: float | None = Field(description="Dense reference; see dense_source. Null only "
                                "with baseline 'none'.")
    dense_source: str
    initial: float | None = Field(description="Before training (the initial weights).")
    metric: str = Field(default="accuracy", description="accuracy, r2 or perplexity.")
    higher_is_better: bool = True
    baseline: str = Field(default="none", description="The baseline that ran: train, "
                          "evaluate or none.")


class TrainingSection(_Section):
    steps: int
    epochs: int
    device: str
    seconds: float | None
    attempts: int
    resumed_from_step: int | None
    world_size: int = Field(default=1, description="Ranks that trained the job.")
    global_batch: int | None = Field(
        default=None, description="Examples per optimiser step over all ranks (training."
        "batch_size; each rank takes global_batch / world_size of them).")
    ranks_compared: int = Field(
        default=0, description="Checkpoints at which the masks, weights and buffers of every "
        "rank were gathered and found identical (0 with one rank).")


class SpeedupRow(_Section):
    batch: int
    dense_ms: float
    sparse_ms: float
    speedup: float


class PredictedSpeedup(_Section):
    kind: str | None
    unit: str | None
    dense: float | None
    sparse: float
    speedup: float | None


class SpeedupSection(_Section):
    """The exported sparse model timed against the dense one on the worker (worker.speedup)."""

    device: str
    batch_size: int
    unit: str
    statistic: str
    kernels: dict[str, str]
    batches: list[SpeedupRow]
    faster: bool
    predicted: PredictedSpeedup | None
    summary: str


class SpeedupFailed(_Section):
    error: str


class LatencySection(_Section):
    """Measured latency of the exported model at the training batch size, beside the promise."""

    unit: str
    device: str
    batch_size: int
    dense_measured: float
    sparse_measured: float
    predicted: float | None = Field(description="The cost model's latency, when it is one.")
    promised: float | None = Field(description="The budget, when it was a latency.")
    kept: bool | None = Field(description="sparse_measured within 15% of promised.")
    measured_vs_promised: float | None = Field(default=None,
                                               description="sparse_measured / promised.")
    note: str | None = Field(default=None, description="The promise in one sentence: kept, or "
                             "by how much it was missed and why.")


class DeploymentLayer(_Section):
    name: str
    nnz_blocks: int = Field(description="Nonzero blocks; a structured layer: the input-output "
                            "channel pairs its weight connects.")
    kept_in: int | None = Field(default=None, description="A structured layer's kept inputs.")
    kept_out: int | None = Field(default=None, description="A structured layer's kept outputs.")
    kernel: str = Field(default="dense", description="The kernel the export chose for it.")
    measured: float | None = Field(description="Null for a weight not called on its own.")
    predicted: float
    error: float | None


class DeploymentBatch(_Section):
    batch: int
    measured: float = Field(description="The whole exported model.")
    layers: dict[str, float] = Field(description="Each cost-model layer in the deployed model.")


class DeploymentSection(_Section):
    """The exported model measured on the worker beside the fitted cost model's prediction at
    the cost model's batch size, stored with the cost model as a held-out point
    (spartan_service.worker.deployment)."""

    unit: str
    device: str
    batch_size: int = Field(description="The cost model's batch size: what it predicts.")
    statistic: str
    predicted: float
    measured: float
    error: float = Field(description="|predicted - measured| / measured.")
    within_tolerance: bool
    tolerance: float
    layers: list[DeploymentLayer]
    batches: list[DeploymentBatch] = Field(description="Batch 1, training, cost model's.")
    cost_model: dict[str, Any] = Field(
        description="{id, name, version, points, mape, needs_refit}: its error over every "
        "deployed model measured against it so far, this one included.")
    message: str | None = Field(default=None, description="Said when the error is > 15%.")
    refit: dict[str, str] | None = Field(
        default=None, description="{method, url}: the refit offered when the error is > 15%.")


class DeploymentFailed(_Section):
    error: str


class Report(_Section):
    job_id: str
    name: str | None
    spec: dict[str, Any]
    model: ModelSection
    data: DataSection
    sparsity: SparsitySection
    cost: CostSection
    accuracy: AccuracySection
    val_loss: float | None
    training: TrainingSection
    curve: list[dict[str, Any]] = Field(description="One record per epoch.")
    warnings: list[str]
    speedup: SpeedupSection | SpeedupFailed
    latency: LatencySection | None = Field(description="Null when the export failed.")
    deployment: DeploymentSection | DeploymentFailed | None = Field(
        default=None, description="With a fitted latency cost model: the loop closed.")
