"""Real workloads end to end: `spartan serve --workers 1` with SPARTAN_DATA_ROOTS, each model and
data source (an image folder, tiny BERT and GPT-2 built from configs and saved here, a parquet
text table, .npy arrays, Fashion-MNIST), each task, the recipe switches and the dense
reference, driven over HTTP; bad data failing fast with the file and the problem."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spartan_service.cli.client import ClientError
from tests import workloads
from tests.e2e.conftest import Serve, base_env, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("storage").resolve()
    workloads.image_folder(root / "images", per_class=16)
    workloads.tiny_bert(root / "bert")
    workloads.tiny_gpt2(root / "gpt2")
    workloads.text_parquet(root / "reviews.parquet", n=160)
    workloads.npy_pair(root / "train", n=384, regression=True, shards=3)
    workloads.npy_pair(root / "val", n=96, regression=True, seed=1)
    return root


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory, storage: Path) -> Iterator[Serve]:
    home = tmp_path_factory.mktemp("serve")
    env = base_env(home / "data", SPARTAN_DATA_ROOTS=str(storage),
                   HF_HUB_CACHE=str(home / "hub"), HF_HUB_OFFLINE="1",
                   TOKENIZERS_PARALLELISM="false")
    server = Serve(env, home, workers=1)
    server.start()
    yield server
    server.stop()


def run(serve: Serve, spec: dict[str, Any], timeout: float = 150) -> tuple[dict[str, Any],
                                                                          dict[str, Any]]:
    """Submit, wait, and return (job, report)."""
    assert serve.client is not None
    job = wait_for(serve.client, serve.client.submit(spec)["id"], timeout=timeout)
    assert job["status"] == "succeeded", f"{job['error']}\n{serve.log_text()[-3000:]}"
    report: dict[str, Any] = serve.client.http.get(
        f"/v1/jobs/{job['id']}/artifacts/report.json").json()
    return job, report


def metrics_lines(serve: Serve, job_id: str) -> list[dict[str, Any]]:
    assert serve.client is not None
    text = serve.client.http.get(f"/v1/jobs/{job_id}/artifacts/metrics.jsonl").text
    return [json.loads(line) for line in text.splitlines()]


def test_image_folder_with_every_recipe_and_a_trained_dense_twin(serve: Serve,
                                                                 storage: Path) -> None:
    spec = {"model": {"arch": "cnn", "kwargs": {"channels": [8, 16]}},
            "data": {"dataset": "imagefolder",
                     "kwargs": {"root": str(storage / "images"), "size": 8}},
            "sparsity": {"method": "spartan", "budget": 0.3},
            "training": {"epochs": 3, "batch_size": 8, "precision": "bf16", "grad_accum": 2,
                         "grad_clip": 1.0, "label_smoothing": 0.1, "lr_warmup_frac": 0.2,
                         "weight_decay": 0.01, "eval_every": 2, "loader_workers": 2},
            "baseline": "train"}
    job, report = run(serve, spec)
    acc = report["accuracy"]
    assert acc["metric"] == "accuracy" and 0 <= acc["sparse"] <= 1 and 0 <= acc["dense"] <= 1
    assert acc["dense_source"].startswith("a dense twin")
    assert report["data"]["train_examples"] == 26 and report["model"]["input_shape"] == [3, 8, 8]
    # 26 examples / batch 8 = 4 micro-batches an epoch, 2 an optimiser step: 2 steps an epoch.
    assert report["training"]["steps"] == 6 == job["progress"]["total_steps"]
    assert report["sparsity"]["measured_density"] <= 0.3 + 1e-6
    evals = [r for r in metrics_lines(serve, job["id"]) if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [2, 4, 6]
    assert all("val_accuracy" in r and "dense_val_accuracy" in r for r in evals)


def test_tiny_bert_on_a_parquet_table_evaluated_before_sparsifying(serve: Serve,
                                                                   storage: Path) -> None:
    spec = {"model": {"arch": f"hf:{storage / 'bert'}"},
            "data": {"dataset": "hf", "kwargs": {"path": str(storage / "reviews.parquet"),
                                                 "max_length": 12}},
            "sparsity": {"method": "spartan", "budget": 0.5},
            "training": {"epochs": 2, "batch_size": 16, "lr": 3e-3}}
    job, report = run(serve, spec)
    acc = report["accuracy"]
    assert report["spec"]["baseline"] is None and acc["dense"] == acc["initial"]
    assert acc["dense_source"].startswith("the initial weights")
    assert acc["metric"] == "accuracy" and report["model"]["input_shape"] is None
    masked = {row["name"] for row in report["sparsity"]["layers"]}
    assert "bert.encoder.layer.0.attention.self.query.weight" in masked
    assert job["progress"]["metric"] == "accuracy"


def test_tiny_gpt2_causal_lm_reports_perplexity(serve: Serve, storage: Path) -> None:
    spec = {"model": {"arch": f"hf:{storage / 'gpt2'}"},
            "data": {"dataset": "hf", "kwargs": {"path": str(storage / "reviews.parquet")}},
            "sparsity": {"method": "spartan", "budget": 0.5},
            "training": {"task": "causal_lm", "epochs": 2, "batch_size": 16, "lr": 5e-3}}
    job, report = run(serve, spec)
    acc = report["accuracy"]
    assert acc["metric"] == "perplexity" and acc["higher_is_better"] is False
    vocab = len(workloads.WORDS) + 5
    assert 1.0 < acc["sparse"] < vocab and acc["dense"] == acc["initial"]
    assert acc["sparse"] < acc["initial"], "two epochs beat the random initialisation"
    epochs = [r for r in metrics_lines(serve, job["id"]) if r["kind"] == "epoch"]
    assert all("val_perplexity" in r for r in epochs)


def test_npy_shards_regression_with_a_named_validation_split(serve: Serve,
                                                            storage: Path) -> None:
    spec = {"model": {"arch": "mlp", "kwargs": {"hidden": [32]}},
            "data": {"dataset": "npy", "kwargs": {
                "x": str(storage / "train" / "x"), "y": str(storage / "train" / "y"),
                "val_x": str(storage / "val" / "x.npy"), "val_y": str(storage / "val" / "y.npy")}},
            "sparsity": {"method": "spartan", "budget": 0.5},
            "training": {"task": "regression", "epochs": 4, "batch_size": 32, "lr": 0.01},
            "baseline": "train"}
    _, report = run(serve, spec)
    acc = report["accuracy"]
    assert acc["metric"] == "r2" and acc["sparse"] > 0.5 and acc["dense"] > 0.5
    assert report["data"] == {"dataset": "npy", "train_examples": 384, "val_examples": 96}


def test_fashion_mnist_subset(serve: Serve) -> None:
    workloads.need_fashion_mnist()
    spec = {"model": {"arch": "mlp", "kwargs": {"hidden": [64]}},
            "data": {"dataset": "fashion-mnist", "kwargs": {"limit": 2000, "val_limit": 500}},
            "sparsity": {"method": "spartan", "budget": 0.1},
            "training": {"epochs": 1, "batch_size": 64, "max_steps": 25}}
    _, report = run(serve, spec)
    assert report["training"]["steps"] == 25 and report["accuracy"]["sparse"] > 0.4
    assert report["data"]["val_examples"] == 500


def test_bad_data_fails_the_job_fast_naming_the_file(serve: Serve, storage: Path) -> None:
    assert serve.client is not None
    broken = storage / "broken"
    workloads.image_folder(broken, per_class=3)
    (broken / "right" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    spec = {"model": {"arch": "mlp"},
            "data": {"dataset": "imagefolder", "kwargs": {"root": str(broken), "size": 8}},
            "training": {"epochs": 1}}
    job = wait_for(serve.client, serve.client.submit(spec)["id"], timeout=150)
    assert job["status"] == "failed" and job["progress"]["step"] == 0
    assert "right/1.png: cannot read the image" in job["error"]
    # A task the model cannot do: refused at submit (its config), naming the task and model.
    spec = {"model": {"arch": f"hf:{storage / 'bert'}"},
            "data": {"dataset": "imagefolder",
                     "kwargs": {"root": str(storage / "images"), "size": 8}},
            "training": {"epochs": 1}}
    with pytest.raises(ClientError) as info:
        serve.client.submit(spec)
    assert info.value.status == 422
    assert "training.task: a 'bert' model reads token ids" in str(info.value)
