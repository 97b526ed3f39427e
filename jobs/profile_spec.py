"""The profile-job spec: what `POST /v1/profiles` takes. Pydantic v2, no torch.

A profile job times the model's maskable layers on the worker that takes it (its own CPU or
GPU), fits a cost model per batch size and stores both. It is a job of kind "profile" in the
job store: queued, claimed, heartbeated, reaped, cancelled and retried exactly as training
jobs are.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from spartan_service.jobs.fields import Name
from spartan_service.jobs.spec import Block, DataSpec, JobSpec, ModelSpec, _Strict

PROFILE_KERNELS = ("auto", "dense", "csr", "bsr", "semi")
MIN_POINTS = 3  # distinct densities per layer: two fix a line, a third checks it


class ProfileSpec(_Strict):
    """Profile a model on a worker's own hardware and fit a cost model from it."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "name": "cpu-mlp", "model": {"arch": "mlp"}, "data": {"dataset": "digits"},
        "structure": "weights", "block": [1, 1], "batch_sizes": [64], "quick": True,
    }]})

    name: Name | None = Field(
        default=None,
        description="Name of the cost model(s) it makes; each is the next version of the name.",
    )
    model: ModelSpec = Field(default_factory=ModelSpec)
    data: DataSpec = Field(
        default_factory=DataSpec, description="Gives the input shape and the example batch.")
    structure: Literal["weights", "channels"] = "weights"
    block: Block = (1, 1)
    kernels: list[str] = Field(
        default_factory=lambda: ["auto"], min_length=1, max_length=len(PROFILE_KERNELS),
        description="'auto' (time every kernel that applies and keep the fastest per layer), "
        "or the kernels to choose from: dense, csr, bsr, semi.",
    )
    densities: list[float] | None = Field(
        default=None, min_length=MIN_POINTS, max_length=64,
        description="Kept fractions to time (weights); default: a spread from 2% to 100%.",
    )
    widths: list[float] | None = Field(
        default=None, min_length=MIN_POINTS, max_length=64,
        description="Kept width fractions to time (channels).",
    )
    batch_sizes: list[int] = Field(
        default_factory=lambda: [64], min_length=1, max_length=8,
        description="One cost model per batch size.",
    )
    task: Literal["classification", "regression", "causal_lm"] = Field(
        default="classification",
        description="The model's head, as a job's training.task (a Hugging Face model: "
        "causal_lm times its language-model head).")
    quick: bool = Field(default=False, description="Few densities and repeats (for tests).")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    queue: Literal["auto", "cpu", "gpu"] = Field(
        default="auto", description="'auto': gpu when device is 'cuda', else cpu.")

    @field_validator("kernels")
    @classmethod
    def _known_kernels(cls, value: list[str]) -> list[str]:
        unknown = [k for k in value if k not in PROFILE_KERNELS]
        if unknown:
            raise ValueError(f"unknown kernel(s) {', '.join(map(repr, unknown))}; valid: "
                             f"{', '.join(PROFILE_KERNELS)}")
        if "auto" in value and len(value) > 1:
            raise ValueError("'auto' already tries every kernel; give it alone")
        return sorted(set(value), key=value.index)

    @field_validator("densities", "widths")
    @classmethod
    def _fractions(cls, value: list[float] | None) -> list[float] | None:
        if value is None:
            return None
        bad = [v for v in value if not 0.0 < v <= 1.0]
        if bad:
            raise ValueError(f"fractions must lie in (0, 1], got {bad}")
        if len(set(value)) < MIN_POINTS:
            raise ValueError(f"need {MIN_POINTS} or more distinct values for a line and its check")
        return sorted(set(value))

    @field_validator("batch_sizes")
    @classmethod
    def _batches(cls, value: list[int]) -> list[int]:
        bad = [b for b in value if not 1 <= b <= 4096]
        if bad:
            raise ValueError(f"batch sizes must lie in [1, 4096], got {bad}")
        return sorted(set(value), key=value.index)

    @model_validator(mode="after")
    def _structure_fields(self) -> ProfileSpec:
        if self.structure == "weights" and self.widths is not None:
            raise ValueError("'widths' is for structure 'channels'; use 'densities'")
        if self.structure == "channels":
            if self.densities is not None:
                raise ValueError("'densities' is for structure 'weights'; use 'widths'")
            if tuple(self.block) != (1, 1):
                raise ValueError("'block' is for structure 'weights' (channels are whole rows)")
        return self

    @model_validator(mode="after")
    def _fits_as_a_job(self) -> ProfileSpec:
        try:
            self.job_view()
        except ValidationError as exc:
            first = exc.errors()[0]
            raise ValueError(first["msg"].removeprefix("Value error, ")) from None
        return self

    def job_view(self) -> JobSpec:
        """A job on this model and data (task, the largest batch): jobs' path checks and
        data loading serve profiles through it, one way for both."""
        return JobSpec.model_validate({
            "model": self.model.model_dump(mode="json"),
            "data": self.data.model_dump(mode="json"),
            "training": {"task": self.task, "batch_size": max(self.batch_sizes), "epochs": 1}})

    def resolved_queue(self) -> str:
        if self.queue != "auto":
            return self.queue
        return "gpu" if self.device == "cuda" else "cpu"

    def kernel_choice(self) -> tuple[str, tuple[str, ...] | None]:
        """(the profiler's kernel argument, the kernels 'auto' may choose from or None)."""
        if self.kernels == ["auto"]:
            return "auto", None
        if len(self.kernels) == 1:
            return self.kernels[0], None
        return "auto", tuple(self.kernels)
