"""The job spec: defaults, and every validation error naming what is wrong."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from spartan_service.jobs.spec import JobSpec

CONTRACT: dict[str, dict[str, Any]] = {
    "model": {"arch": "mlp"}, "data": {"dataset": "digits"},
    "sparsity": {"method": "spartan", "budget": 0.1}, "training": {"epochs": 2},
}


def with_(section: str, **values: Any) -> dict[str, Any]:
    spec = {k: dict(v) for k, v in CONTRACT.items()}
    spec.setdefault(section, {}).update(values)
    return spec


def error_of(spec: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate(spec)
    return str(info.value)


def test_contract_spec_gets_defaults() -> None:
    spec = JobSpec.model_validate(CONTRACT)
    assert spec.sparsity.block == (1, 1) and spec.cost_model.kind == "params"
    assert spec.training.device == "auto" and spec.resolved_queue() == "cpu"
    assert spec.warnings() == []
    assert JobSpec.model_validate(with_("training", device="cuda")).resolved_queue() == "gpu"
    assert JobSpec.model_validate({**CONTRACT, "queue": "gpu"}).resolved_queue() == "gpu"


@pytest.mark.parametrize(("spec", "needle"), [
    ({**CONTRACT, "extra": 1}, "extra"),
    (with_("model", arch="mlpp"), "valid: mlp, cnn, resnet, vit"),
    (with_("model", arch="hub:x"), "unknown model source"),
    (with_("model", arch="torchvision:resnet18"), "not installed"),
    (with_("model", kwargs={"hiden": [8]}), "unknown kwargs for model 'mlp': hiden; valid: hidden"),
    (with_("model", kwargs={"hidden": [0]}), "'hidden' must be a positive integer"),
    (with_("model", arch="resnet", kwargs={"depth": 10}), "6n + 2"),
    (with_("model", arch="vit", kwargs={"dim": 30, "heads": 4}), "divisible by 'heads'"),
    (with_("data", dataset="imagenet"), "valid: digits, mnist1d, teacher, upload"),
    (with_("data", dataset="upload"), "needs 'upload'"),
    (with_("data", upload="abc"), "only used with dataset 'upload'"),
    (with_("data", dataset="teacher", kwargs={"classes": 1}), "at least 2"),
    (with_("data", dataset="mnist1d", kwargs={"size": 3}), "unknown kwargs for dataset"),
    (with_("data", val_fraction=1.0), "val_fraction"),
    (with_("sparsity", method="magic"), "method"),
    (with_("sparsity", budget=0.0), "budget"),
    (with_("sparsity", budget=1.5), "budget"),
    (with_("sparsity", block=[3, 3]), "block [3, 3] is not supported"),
    (with_("sparsity", warmup_frac=0.6, finetune_frac=0.5), "warmup_frac + finetune_frac"),
    (with_("cost_model", kind="fitted"), "needs 'id'"),
    (with_("cost_model", kind="params", id="x"), "only used with kind 'fitted'"),
    (with_("cost_model", budget_ms=2.0), "needs a fitted latency cost model"),
    (with_("training", epochs=0), "epochs"),
    (with_("training", optimizer="lbfgs"), "optimizer"),
    (with_("training", device="tpu"), "device"),
    (with_("resources", processes=3), "batch_size 64 is the global batch"),
    (with_("resources", processes=65), "less than or equal to 64"),
    (with_("resources", nodes=2), "nodes > 1 is not supported"),
])
def test_invalid_specs_are_refused_naming_the_problem(spec: dict[str, Any], needle: str) -> None:
    assert needle in error_of(spec)


def test_warnings_name_layers_the_block_does_not_divide() -> None:
    spec = JobSpec.model_validate(with_("sparsity", block=[4, 4]))
    assert spec.warnings() == ["layer 'head.weight' of shape [10, 128]: block 4x4 does not "
                               "divide its first two dims; it uses 1x1 blocks"]
    teacher = with_("data", dataset="teacher", kwargs={"dim": 30})
    teacher["sparsity"] = {"block": [4, 4]}
    names = [w.split("'")[1] for w in JobSpec.model_validate(teacher).warnings()]
    assert names == ["layers.0.weight", "head.weight"]  # dim 30 comes from the data kwargs


def test_resources_default_to_one_process_and_split_the_batch() -> None:
    assert JobSpec.model_validate(CONTRACT).resources.processes == 1
    spec = JobSpec.model_validate({**with_("training", batch_size=96),
                                   "resources": {"processes": 4}})
    assert (spec.resources.processes, spec.resources.nodes) == (4, 1)


def test_storage_datasets_tasks_and_recipes() -> None:
    npy = {"dataset": "npy", "kwargs": {"x": "x.npy", "y": "y.npy"}}
    spec = JobSpec.model_validate({**CONTRACT, "data": npy, "training": {
        "task": "regression", "precision": "bf16", "grad_accum": 4, "grad_clip": 1.0,
        "lr_warmup_frac": 0.1, "eval_every": 10, "loader_workers": 2}})
    assert spec.training.task == "regression" and spec.resolved_baseline() == "none"
    assert spec.data.kwargs == {"x": "x.npy", "y": "y.npy"}
    hf = {"model": {"arch": "hf:/models/gpt2"}, "data": {"dataset": "hf",
                                                          "kwargs": {"path": "t.parquet"}}}
    lm = JobSpec.model_validate({**CONTRACT, **hf, "training": {"task": "causal_lm"}})
    assert lm.starts_pretrained() and lm.resolved_baseline() == "evaluate"
    assert JobSpec.model_validate({**CONTRACT, "baseline": "train"}).resolved_baseline() == "train"
    dense = with_("sparsity", method="dense")
    assert JobSpec.model_validate({**dense, "baseline": "train"}).resolved_baseline() == "none"


@pytest.mark.parametrize(("changes", "needle"), [
    ({"data": {"dataset": "npy"}}, "dataset 'npy' needs kwargs 'x'"),
    ({"data": {"dataset": "imagefolder", "kwargs": {"root": "r", "channels": 2}}},
     "'channels' must be 1 (grayscale) or 3"),
    ({"data": {"dataset": "hf", "kwargs": {"path": "p", "val_path": "v", "val_split": "t"}},
      "model": {"arch": "hf:/m"}}, "give one"),
    ({"data": {"dataset": "npy", "kwargs": {"x": "x", "y": "y", "val_x": "vx"}}},
     "'val_x' and 'val_y' go together"),
    ({"data": {"dataset": "hf", "kwargs": {"path": "p"}}}, "needs a Hugging Face model"),
    ({"training": {"task": "regression"}}, "regression' needs real-valued targets"),
    ({"training": {"task": "causal_lm"}}, "causal_lm' needs a Hugging Face causal"),
    ({"training": {"task": "causal_lm"}, "model": {"arch": "hf:/m"}},
     "causal_lm' needs text"),
    ({"training": {"precision": "fp16", "device": "cpu"}}, "'fp16' needs a GPU"),
    ({"training": {"precision": "fp8"}}, "precision"),
    ({"training": {"grad_accum": 0}}, "grad_accum"),
    ({"training": {"label_smoothing": 0.1, "task": "regression"},
      "data": {"dataset": "npy", "kwargs": {"x": "x", "y": "y"}}}, "label_smoothing applies"),
    ({"baseline": "evaluate"}, "baseline 'evaluate' needs pretrained weights"),
    ({"baseline": "twin"}, "baseline"),
    ({"baseline": "train", "resources": {"processes": 2}}, "baseline 'train' runs in one"),
    ({"model": {"arch": "hf:"}}, "unknown model source"),
    ({"model": {"arch": "hf:/m", "kwargs": {"pretrained": "yes"}}}, "'pretrained' must be true"),
])
def test_workload_errors_name_the_problem(changes: dict[str, Any], needle: str) -> None:
    assert needle in error_of({**CONTRACT, **changes})
