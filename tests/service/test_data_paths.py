"""Submitting jobs that read storage: paths outside SPARTAN_DATA_ROOTS, missing files, columns
and tokenizers are 422s naming the field, at submit, before anything is queued (no torch)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.service.conftest import MakeClient
from tests.service.factories import spec


def npy_spec(x: Path, y: Path) -> dict[str, Any]:
    return spec(data={"dataset": "npy", "kwargs": {"x": str(x), "y": str(y)}})


def error(response: Any) -> tuple[list[Any], str]:
    assert response.status_code == 422, response.text
    (item,) = response.json()["detail"]
    return item["loc"], item["msg"]


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    root = tmp_path / "storage"
    root.mkdir()
    np.save(root / "x.npy", np.zeros((8, 4), np.float32))
    np.save(root / "y.npy", np.arange(8) % 2)
    return root


def test_paths_outside_the_roots_are_refused(make_client: MakeClient, storage: Path,
                                              tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    np.save(outside / "x.npy", np.zeros((8, 4), np.float32))
    client = make_client(data_roots=str(storage))
    loc, msg = error(client.post("/v1/jobs", json=npy_spec(outside / "x.npy", storage / "y.npy")))
    assert loc == ["body", "data", "kwargs", "x"] and "outside the data roots" in msg
    ok = client.post("/v1/jobs", json=npy_spec(storage / "x.npy", storage / "y.npy"))
    assert ok.status_code == 202, ok.text
    # No roots configured: no path at all.
    loc, msg = error(make_client().post("/v1/jobs", json=npy_spec(storage / "x.npy",
                                                                  storage / "y.npy")))
    assert loc == ["body", "data", "kwargs", "x"] and "SPARTAN_DATA_ROOTS" in msg


def test_what_the_paths_name_is_checked_where_the_api_sees_it(make_client: MakeClient,
                                                              storage: Path) -> None:
    client = make_client(data_roots=str(storage))
    loc, msg = error(client.post("/v1/jobs", json=npy_spec(storage / "x.npy",
                                                          storage / "gone.npy")))
    assert loc == ["body", "data", "kwargs", "y"] and "does not exist" in msg
    np.save(storage / "neg.npy", np.array([0, 1, -3, 0, 1, 0, 1, 0]))
    loc, msg = error(client.post("/v1/jobs", json=npy_spec(storage / "x.npy",
                                                          storage / "neg.npy")))
    assert loc == ["body", "data", "kwargs", "y"] and "class labels must be >= 0" in msg
    (storage / "t.csv").write_text("sentence,label\nhello,1\n")
    model = storage / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (model / "model.safetensors").write_bytes(b"")
    body = spec(model={"arch": f"hf:{model}"},
                data={"dataset": "hf", "kwargs": {"path": str(storage / "t.csv")}})
    loc, msg = error(client.post("/v1/jobs", json=body))
    assert loc == ["body", "data", "kwargs", "text_column"] and "columns: sentence" in msg
    body["data"]["kwargs"]["text_column"] = "sentence"
    loc, msg = error(client.post("/v1/jobs", json=body))
    assert loc == ["body", "model", "arch"] and "no tokenizer" in msg
    (model / "tokenizer.json").write_text("{}")
    assert client.post("/v1/jobs", json=body).status_code == 202
    # An API that does not mount the storage checks the roots by name only.
    blind = make_client(data_roots=str(storage), check_data=False)
    assert blind.post("/v1/jobs", json=npy_spec(storage / "x.npy",
                                                storage / "gone.npy")).status_code == 202


def test_a_task_the_model_cannot_do_is_refused_at_submit(make_client: MakeClient,
                                                         storage: Path) -> None:
    (storage / "t.csv").write_text("text,label\nhello,1\n")
    model = storage / "bert"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "bert",
                                                   "architectures": ["BertModel"],
                                                   "vocab_size": 30}))
    (model / "model.safetensors").write_bytes(b"")
    (model / "vocab.txt").write_text("hello\n")
    client = make_client(data_roots=str(storage))
    body = spec(model={"arch": f"hf:{model}"}, training={"task": "causal_lm"},
                data={"dataset": "hf", "kwargs": {"path": str(storage / "t.csv")}})
    loc, msg = error(client.post("/v1/jobs", json=body))
    assert loc == ["body", "training", "task"] and "bidirectional encoder" in msg
    body["training"]["task"] = "classification"
    assert client.post("/v1/jobs", json=body).status_code == 202
    (model / "config.json").unlink()
    loc, msg = error(client.post("/v1/jobs", json=body))
    assert loc == ["body", "model", "arch"] and "no config.json" in msg


def test_sweeps_check_the_paths_too(make_client: MakeClient, storage: Path,
                                    tmp_path: Path) -> None:
    client = make_client(data_roots=str(storage))
    body = {"spec": npy_spec(tmp_path / "x.npy", storage / "y.npy"), "budgets": [0.1, 0.2]}
    loc, _ = error(client.post("/v1/sweeps", json=body))
    assert loc == ["body", "spec", "data", "kwargs", "x"]


def test_a_profile_s_paths_are_checked_as_a_job_s(make_client: MakeClient, storage: Path,
                                                    tmp_path: Path) -> None:
    client = make_client(data_roots=str(storage))
    body = {"name": "npy", "quick": True, "data": npy_spec(storage / "x.npy",
                                                           storage / "y.npy")["data"]}
    body["data"]["kwargs"]["y"] = str(tmp_path / "y.npy")
    loc, msg = error(client.post("/v1/profiles", json=body))
    assert loc == ["body", "data", "kwargs", "y"] and "outside the data roots" in msg
    body["data"]["kwargs"]["y"] = str(storage / "gone.npy")
    loc, msg = error(client.post("/v1/profiles", json=body))
    assert loc == ["body", "data", "kwargs", "y"] and "does not exist" in msg
    loc, _ = error(client.post("/v1/profiles", json={"model": {"arch": f"hf:{tmp_path}"}}))
    assert loc == ["body", "model", "arch"]
    body["data"]["kwargs"]["y"] = str(storage / "y.npy")
    assert client.post("/v1/profiles", json=body).status_code == 202
    assert client.get("/v1/profiles").json()["count"] == 1
