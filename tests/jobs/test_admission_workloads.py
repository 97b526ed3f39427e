"""Submit-time estimates for the workload fields: Fashion-MNIST's known size, steps with
gradient accumulation and max_steps, and data on storage left to the worker."""

from __future__ import annotations

from spartan_service.jobs.admission import estimate
from spartan_service.jobs.spec import JobSpec


def test_estimates_follow_accumulation_max_steps_and_known_sizes() -> None:
    fashion = JobSpec.model_validate({
        "model": {"arch": "mlp", "kwargs": {"hidden": [32]}},
        "data": {"dataset": "fashion-mnist", "kwargs": {"limit": 1000, "val_limit": 200}},
        "training": {"epochs": 3, "batch_size": 100, "grad_accum": 4}})
    found = estimate(fashion)
    assert found.steps == 3 * 3  # 10 batches an epoch, 4 per step: 3 steps
    assert found.dataset_bytes == 1200 * 784  # uint8 pixels, test set included
    assert found.params == 784 * 32 + 32 + 32 * 10 + 10
    capped = fashion.model_copy(update={"training": fashion.training.model_copy(
        update={"max_steps": 5})})
    assert estimate(capped).steps == 5
    npy = JobSpec.model_validate({"data": {"dataset": "npy", "kwargs": {"x": "x", "y": "y"}}})
    unknown = estimate(npy)  # the worker checks what it streams once it has opened it
    assert unknown.steps is None and unknown.dataset_bytes is None
