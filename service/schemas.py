"""What the API sends back, one schema per role (the spec a client sends is jobs.spec.JobSpec).

`XPublic` is one resource, `XsPublic` a page of them as `{"data": [...], "count": N}` where
count is the total matching, not the page length.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from spartan_service.jobs.fields import JsonDict, Name
from spartan_service.jobs.status import JobStatus

_JOB_EXAMPLE: dict[str, Any] = {
    "id": "3f2c9a1e6b7d4c0e9a8b7c6d5e4f3a2b",
    "name": "mlp-digits-10pct",
    "status": "running",
    "queue": "cpu",
    "progress": {"step": 12, "total_steps": 46, "epoch": 1, "loss": 0.41, "eta_s": 3.2},
    "metrics": {},
    "warnings": [],
    "error": None,
    "attempts": 1,
    "resumed_from_step": None,
    "worker": "celery@host",
    "cancel_requested": False,
    "spec": {"model": {"arch": "mlp"}, "data": {"dataset": "digits"},
             "sparsity": {"method": "spartan", "budget": 0.1}, "training": {"epochs": 2}},
    "created_at": "2025-01-01T12:00:00Z",
    "updated_at": "2025-01-01T12:00:04Z",
    "started_at": "2025-01-01T12:00:01Z",
    "finished_at": None,
}


class Error(BaseModel):
    """Every error leaves the API in this shape."""

    detail: str | list[dict[str, Any]] = Field(
        description="A message, or for invalid input a list of {loc, msg, type} naming the field."
    )
    model_config = ConfigDict(json_schema_extra={"examples": [{"detail": "job not found"}]})


class Progress(BaseModel):
    """Where training is; the worker adds epoch, loss, accuracy, budget, beta, eta_s, ..."""

    model_config = ConfigDict(extra="allow")
    step: int = 0
    total_steps: int | None = None


class JobPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True,
                              json_schema_extra={"examples": [dict(_JOB_EXAMPLE)]})

    id: str
    name: str | None
    status: JobStatus
    queue: str
    progress: Progress
    metrics: dict[str, Any]
    warnings: list[str]
    error: str | None
    attempts: int
    resumed_from_step: int | None
    worker: str | None
    cancel_requested: bool
    spec: dict[str, Any] = Field(description="The submitted spec with its defaults filled in.")
    results: JobResults | None = Field(
        default=None, description="Once succeeded: accuracy and latency from its report.")
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobResults(BaseModel):
    """A finished job's headline figures, from its report (latencies in ms)."""

    accuracy: float | None = Field(description="The sparse model's validation metric.")
    dense_accuracy: float | None
    metric: str = Field(default="accuracy", description="What accuracy holds: the task's "
                        "metric (accuracy, r2, perplexity).")
    measured_latency: float | None = Field(description="The exported model, on the worker.")
    dense_latency: float | None
    predicted_latency: float | None = Field(description="The cost model's, when it is one of "
                                            "latency.")
    latency_unit: str = "ms"
    density: float | None


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int


class ArtifactPublic(BaseModel):
    name: str
    size: int = Field(description="Bytes.")


class ArtifactsPublic(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"data": [
        {"name": "model.safetensors", "size": 190312}, {"name": "report.json", "size": 5120},
    ], "count": 2}]})

    data: list[ArtifactPublic]
    count: int


class UploadPublic(BaseModel):
    """An upload as lists show it: its tensors counted, not listed (GET one for them)."""

    model_config = ConfigDict(from_attributes=True, json_schema_extra={"examples": [{
        "id": "9b1f0c2d3e4a5b6c7d8e9f0a1b2c3d4e", "filename": "train.npz", "kind": "npz",
        "size": 81234, "sha256": "ab12...", "created_at": "2025-01-01T12:00:00Z",
        "tensor_count": 2,
    }]})

    id: str
    filename: str
    kind: Literal["safetensors", "npz"]
    size: int
    sha256: str
    created_at: datetime
    tensor_count: int = Field(description="How many tensors the file holds.")

    @classmethod
    def of(cls, row: Any) -> UploadPublic:
        return cls(id=row.id, filename=row.filename, kind=row.kind, size=row.size,
                   sha256=row.sha256, created_at=row.created_at,
                   tensor_count=len(row.tensors or {}))


class UploadDetail(UploadPublic):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "9b1f0c2d3e4a5b6c7d8e9f0a1b2c3d4e", "filename": "train.npz", "kind": "npz",
        "size": 81234, "sha256": "ab12...", "created_at": "2025-01-01T12:00:00Z",
        "tensor_count": 2,
        "tensors": {"x": {"dtype": "float32", "shape": [1000, 64]},
                    "y": {"dtype": "int64", "shape": [1000]}},
    }]})

    tensors: dict[str, Any] = Field(description="name -> {dtype, shape} of every tensor.")

    @classmethod
    def of(cls, row: Any) -> UploadDetail:
        return cls(**UploadPublic.of(row).model_dump(), tensors=row.tensors or {})


class UploadsPublic(BaseModel):
    data: list[UploadPublic]
    count: int


# The profile file's shape (DESIGN.md), for the document: costmodels.schema checks the rest
# (distinct sample counts, nnz_blocks within the layer, unique names) and answers 422.
PROFILE_SCHEMA: dict[str, Any] = {
    "required": ["layers"],
    "properties": {
        "device": {"type": "string"},
        "unit": {"type": "string", "enum": ["s", "ms", "us"], "default": "ms"},
        "layers": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["name", "shape", "samples"],
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "shape": {"type": "array", "minItems": 2,
                          "items": {"type": "integer", "minimum": 1}},
                "block": {"type": "array", "minItems": 2, "maxItems": 2,
                          "items": {"type": "integer", "minimum": 1}},
                "samples": {"type": "array", "minItems": 3, "items": {
                    "type": "object", "required": ["nnz_blocks", "latency"],
                    "properties": {"nnz_blocks": {"type": "integer", "minimum": 0},
                                   "latency": {"type": "number", "exclusiveMinimum": 0}},
                }},
            },
        }},
    },
}


class CostModelCreate(BaseModel):
    """A profile as `spartan profile` writes it, to be fitted into a cost model; or a cost
    model as `spartan fit` writes it, registered as it is."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "name": "a100-mlp",
        "profile": {"device": "cpu", "unit": "ms", "layers": [{
            "name": "fc1", "shape": [256, 64], "block": [1, 1],
            "samples": [{"nnz_blocks": 1638, "latency": 0.052},
                        {"nnz_blocks": 8192, "latency": 0.121},
                        {"nnz_blocks": 16384, "latency": 0.230}]}]},
    }]})

    name: Name | None = None
    profile: JsonDict | None = Field(
        default=None,
        description="The profile file `spartan profile` writes (give this or cost_model).",
        json_schema_extra=PROFILE_SCHEMA,
    )
    cost_model: JsonDict | None = Field(
        default=None, description="A fitted cost model as `spartan fit` writes it (give this "
        "or profile).")


class CostModelPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str | None
    version: int = Field(description="Versions count up per name: a refit is the next one.")
    created_at: datetime
    hardware: dict[str, Any] | None = Field(
        description="Where it was measured: device, cpu, cores, threads, gpu, gpu_memory_gb, "
        "driver, cuda, torch, kernels (null for a profile that did not say).")
    fingerprint: str | None = Field(description="Hash of the hardware fields that must match.")
    hardware_label: str | None
    batch: int | None = Field(description="The batch size it was profiled at.")
    source: str = Field(description="'upload', 'profile' (a profile job) or 'refit'.")
    parent_id: str | None = Field(description="The version a refit was made from.")
    profile_job_id: str | None
    data: dict[str, Any] = Field(
        description="The fitted cost model: {unit, device, layers: {name: {intercept, slope, "
        "block, r2, mape}}}."
    )


class CostModelDetail(CostModelPublic):
    profile: dict[str, Any] | None = Field(description="The profile it was fitted from.")
    refit: dict[str, Any] | None = Field(
        default=None, description="For a refit version: the points folded in and the error on "
        "them before and after.")
    deployment: dict[str, Any] | None = Field(
        default=None, description="Its error on real deployed models: the trained models "
        "measured on the worker beside this model's prediction (held-out points).")


class CostModelsPublic(BaseModel):
    data: list[CostModelPublic]
    count: int


class Health(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)


class SweepPoint(BaseModel):
    budget: float | None = Field(description="The point's budget (null for a dense point).")
    method: str
    structure: str | None
    job_id: str
    status: JobStatus
    accuracy: float | None
    measured_latency: float | None = Field(description="ms, the exported model on the worker.")
    predicted_latency: float | None = Field(description="ms, from a latency cost model.")
    pareto: bool = Field(description="On the frontier of max accuracy and min measured latency "
                         "(only points with both figures can be).")
    error: str | None = None


class DenseReference(BaseModel):
    accuracy: float | None
    measured_latency: float | None
    job_id: str | None = Field(description="The sweep's dense point, when it has one.")
    source: str


class SweepSummary(BaseModel):
    id: str
    name: str | None
    status: JobStatus = Field(description="running while any point is queued or running.")
    counts: dict[str, int] = Field(description="Points by status.")
    budgets: list[float]
    budget_kind: Literal["fraction", "budget_ms"]
    cancel_requested: bool
    created_at: datetime


class SweepPublic(SweepSummary):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "5e1f...", "name": "mlp-digits-frontier", "status": "succeeded",
        "counts": {"succeeded": 2}, "budgets": [0.1, 0.3], "budget_kind": "fraction",
        "cancel_requested": False, "created_at": "2025-01-01T12:00:00Z",
        "spec": {"model": {"arch": "mlp"}}, "latency_unit": "ms",
        "dense": {"accuracy": 0.97, "measured_latency": 0.21, "job_id": None,
                  "source": "the points' reports"},
        "points": [
            {"budget": 0.1, "method": "spartan", "structure": None, "job_id": "3f2c...",
             "status": "succeeded", "accuracy": 0.95, "measured_latency": 0.12,
             "predicted_latency": None, "pareto": True, "error": None},
            {"budget": 0.3, "method": "spartan", "structure": None, "job_id": "9a0b...",
             "status": "succeeded", "accuracy": 0.97, "measured_latency": 0.16,
             "predicted_latency": None, "pareto": True, "error": None}],
    }]})

    spec: dict[str, Any] = Field(description="The base spec, defaults filled in.")
    latency_unit: str = "ms"
    dense: DenseReference | None = Field(description="Where the dense model sits, if known.")
    points: list[SweepPoint]


class SweepsPublic(BaseModel):
    data: list[SweepSummary]
    count: int


class LogRecordPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int = Field(description="Increases with each record; poll with since = the last one.")
    attempt: int
    created_at: datetime
    level: str
    logger: str
    message: str = Field(description="The message, with its traceback for an error.")


class LogsPublic(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"data": [
        {"id": 7, "attempt": 1, "created_at": "2025-01-01T12:00:03Z", "level": "WARNING",
         "logger": "spartan_service.worker.data",
         "message": "val_fraction leaves 3 examples per class"},
    ], "count": 1}]})

    data: list[LogRecordPublic]
    count: int = Field(description="Records after `since` in all.")


class ProfilePublic(BaseModel):
    """A profile job: the model timed on a worker's own hardware, and the cost model(s) fitted
    from it (`cost_model_id` once fitted; one per batch size in `cost_models`)."""

    id: str
    name: str | None
    status: JobStatus
    queue: str
    progress: Progress
    warnings: list[str]
    error: str | None
    attempts: int
    worker: str | None
    cancel_requested: bool
    spec: dict[str, Any] = Field(description="The submitted spec with its defaults filled in.")
    cost_model_id: str | None = Field(description="The fitted cost model (first batch size).")
    cost_models: list[dict[str, Any]] = Field(
        description="[{batch, cost_model_id, version, layers, fingerprint}] per batch size.")
    hardware: dict[str, Any] | None = Field(description="The worker's hardware.")
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class ProfileDetail(ProfilePublic):
    profile: dict[str, Any] | None = Field(
        description="The raw profile of the first batch size (the profile file format).")
    profiles: list[dict[str, Any]] = Field(description="[{batch, cost_model_id, profile}].")


class ProfilesPublic(BaseModel):
    data: list[ProfilePublic]
    count: int
