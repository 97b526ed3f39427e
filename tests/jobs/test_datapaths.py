"""Paths of a spec: under the data roots, and what they name checked without torch (headers,
columns, labels, model folders), each problem naming its field."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from spartan_service.jobs import catalog, data_arrays, data_tables, datapaths, model_dirs
from spartan_service.jobs.spec import JobSpec


def spec(dataset: str, arch: str = "mlp", task: str = "classification",
         **kwargs: Any) -> JobSpec:
    return JobSpec.model_validate({"model": {"arch": arch}, "data": {"dataset": dataset,
                                                                     "kwargs": kwargs},
                                   "training": {"task": task}})


def problem(s: JobSpec, roots: list[Path], look: bool = True) -> tuple[list[Any], str]:
    with pytest.raises(datapaths.PathError) as info:
        datapaths.check_spec(s, roots, look)
    return info.value.loc, info.value.msg


def test_paths_must_lie_under_the_roots(tmp_path: Path) -> None:
    root, other = tmp_path / "root", tmp_path / "other"
    (root / "a").mkdir(parents=True)
    other.mkdir()
    (root / "escape").symlink_to(other)
    loc, msg = problem(spec("npy", x=str(other / "x.npy"), y=str(other / "y.npy")), [root])
    assert loc == ["data", "kwargs", "x"] and "outside the data roots" in msg
    loc, msg = problem(spec("npy", x="escape/x.npy", y="a/y.npy"), [root], look=False)
    assert loc == ["data", "kwargs", "x"], "a symlink out of the root is outside"
    loc, msg = problem(spec("npy", x="../other/x.npy", y="y.npy"), [root], look=False)
    assert "outside" in msg
    loc, msg = problem(spec("imagefolder", root="a"), [])
    assert loc == ["data", "kwargs", "root"] and "SPARTAN_DATA_ROOTS" in msg
    # Relative paths are taken from the first root; without `look`, nothing is opened.
    datapaths.check_spec(spec("npy", x="a/x.npy", y="a/y.npy"), [root], look=False)
    assert datapaths.resolved_paths(spec("imagefolder", root="a"), [root]) == {
        "data.kwargs.root": (root / "a").resolve()}


def test_image_folder_needs_class_folders_with_images(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    loc, msg = problem(spec("imagefolder", root=str(root)), [tmp_path])
    assert loc == ["data", "kwargs", "root"] and "does not exist" in msg
    (root / "cat").mkdir(parents=True)
    (root / "cat" / "1.png").write_bytes(b"x")
    assert "at least 2 class subfolders" in problem(spec("imagefolder", root=str(root)),
                                                      [tmp_path])[1]
    (root / "dog").mkdir()
    (root / "dog" / "notes.txt").write_text("no image")
    assert "holds no .png" in problem(spec("imagefolder", root=str(root)), [tmp_path])[1]
    (root / "dog" / "2.JPG").write_bytes(b"x")
    datapaths.check_spec(spec("imagefolder", root=str(root)), [tmp_path])
    val = tmp_path / "val"
    for name in ("cat", "bird"):
        (val / name).mkdir(parents=True)
        (val / name / "1.png").write_bytes(b"x")
    loc, msg = problem(spec("imagefolder", root=str(root), val_root=str(val)), [tmp_path])
    assert loc == ["data", "kwargs", "val_root"] and "differ" in msg


def test_table_columns_and_splits(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a b"], "label": [1]}), tmp_path / "t.parquet")
    (tmp_path / "t.csv").write_text("sentence,label\nhello,1\n")
    kw = {"text_column": "text", "label_column": "label", "split": None, "val_split": None}
    data_tables.check_table({"data.kwargs.path": tmp_path / "t.parquet"}, kw, "classification")
    with pytest.raises(datapaths.PathError) as info:
        data_tables.check_table({"data.kwargs.path": tmp_path / "t.csv"}, kw, "classification")
    assert info.value.loc == ["data", "kwargs", "text_column"]
    assert "columns: sentence, label" in info.value.msg
    # causal_lm needs no label column
    pq.write_table(pa.table({"text": ["a"]}), tmp_path / "lm.parquet")
    data_tables.check_table({"data.kwargs.path": tmp_path / "lm.parquet"}, kw, "causal_lm")
    with pytest.raises(datapaths.PathError) as info:
        data_tables.check_table({"data.kwargs.path": tmp_path / "lm.parquet"}, kw,
                              "classification")
    assert info.value.loc == ["data", "kwargs", "label_column"]
    # a saved DatasetDict: its splits and each split's features, from its JSON files
    saved = tmp_path / "saved"
    (saved / "train").mkdir(parents=True)
    (saved / "dataset_dict.json").write_text(json.dumps({"splits": ["train"]}))
    (saved / "train" / "dataset_info.json").write_text(json.dumps(
        {"features": {"text": {}, "label": {}}}))
    data_tables.check_table({"data.kwargs.path": saved}, kw, "classification")
    with pytest.raises(datapaths.PathError) as info:
        data_tables.check_table({"data.kwargs.path": saved}, kw | {"val_split": "test"},
                              "classification")
    assert info.value.loc == ["data", "kwargs", "val_split"] and "splits: train" in info.value.msg
    (tmp_path / "junk").mkdir()
    with pytest.raises(datapaths.PathError) as info:
        data_tables.check_table({"data.kwargs.path": tmp_path / "junk"}, kw, "classification")
    assert "neither a saved dataset" in info.value.msg


def test_npy_headers_shapes_and_labels(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((6, 3), np.float32))
    np.save(tmp_path / "y.npy", np.array([0, 1, 2, 0, 1, 2]))
    np.save(tmp_path / "y5.npy", np.zeros(5, np.int64))
    np.save(tmp_path / "neg.npy", np.array([0, 1, -1, 0, 1, 2]))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}] * 6, dtype=object), allow_pickle=True)
    full = (tmp_path / "x.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(full[:-8])
    (tmp_path / "text.npy").write_text("not an array")
    roots = [tmp_path]

    def check(x: str, y: str | None, task: str = "classification", **kw: Any) -> None:
        args = {"x": str(tmp_path / x), **({"y": str(tmp_path / y)} if y else {}), **kw}
        s = spec("npy", arch="hf:org/m" if task == "causal_lm" else "mlp", task=task, **args)
        paths = {k: v for k, v in datapaths.resolved_paths(s, roots).items()
                 if k.startswith("data.")}
        data_arrays.check_arrays(paths, s.data.kwargs | {"num_classes": kw.get("num_classes")},
                               task)

    check("x.npy", "y.npy")
    check("x.npy", "y.npy", num_classes=3)
    cases = [(("x.npy", "y5.npy"), "y", "6 examples in x but 5 labels in y"),
             (("x.npy", "neg.npy"), "y", "class labels must be >= 0"),
             (("cut.npy", "y.npy"), "x", "truncated"),
             (("text.npy", "y.npy"), "x", "not a readable .npy"),
             (("obj.npy", "y.npy"), "x", "never unpickled"),
             (("x.npy", "missing.npy"), "y", "does not exist")]
    for (x, y), field, needle in cases:
        with pytest.raises(datapaths.PathError) as info:
            check(x, y)
        assert info.value.loc == ["data", "kwargs", field] and needle in info.value.msg, x
    with pytest.raises(datapaths.PathError, match="out of range for num_classes 2"):
        check("x.npy", "y.npy", num_classes=2)
    with pytest.raises(datapaths.PathError, match="causal_lm needs token ids"):
        check("x.npy", None, task="causal_lm")


def test_model_folder_needs_config_weights_and_tokenizer(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    with pytest.raises(model_dirs.ModelDirError, match="no config.json"):
        model_dirs.check_model_dir(folder, True, False)
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(model_dirs.ModelDirError, match="no .safetensors weights"):
        model_dirs.check_model_dir(folder, True, False)
    model_dirs.check_model_dir(folder, False, False)  # from the config: no weights needed
    with pytest.raises(model_dirs.ModelDirError, match="no tokenizer") as info:
        model_dirs.check_model_dir(folder, False, True)
    assert info.value.loc == ["model", "arch"]
    (folder / "vocab.json").write_text("{}")
    with pytest.raises(model_dirs.ModelDirError, match="no merges.txt"):
        model_dirs.check_model_dir(folder, False, True)
    (folder / "vocab.json").unlink()
    (folder / "vocab.txt").write_text("a\n")
    model_dirs.check_model_dir(folder, False, True)
    if os.geteuid() != 0:  # root reads anything
        folder.chmod(0)
        with pytest.raises(model_dirs.ModelDirError, match="not readable"):
            model_dirs.check_model_dir(folder, False, True)
        folder.chmod(0o755)
    assert datapaths.hf_model_dir("hf:org/name") is None
    assert datapaths.hf_model_dir("hf:/abs/dir") == "/abs/dir"


def model_folder(root: Path, config: dict[str, Any]) -> Path:
    """A folder with only what the API reads: config.json, a weights file, a tokenizer file."""
    folder = root / str(config["model_type"])
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(b"")
    (folder / "tokenizer.json").write_text("{}")
    return folder


def test_a_task_the_model_cannot_do_names_training_task(tmp_path: Path) -> None:
    bert = model_folder(tmp_path, {"model_type": "bert", "architectures": ["BertModel"],
                                   "vocab_size": 30})
    gpt2 = model_folder(tmp_path, {"model_type": "gpt2", "vocab_size": 30})
    vit = model_folder(tmp_path, {"model_type": "vit", "image_size": 8, "num_channels": 3})
    np.save(tmp_path / "ids.npy", np.zeros((4, 6), np.int64))
    np.save(tmp_path / "y.npy", np.arange(4) % 2)
    (tmp_path / "t.csv").write_text("text,label\nhello,1\n")
    text = {"path": str(tmp_path / "t.csv")}
    arrays = {"x": str(tmp_path / "ids.npy"), "y": str(tmp_path / "y.npy")}
    roots = [tmp_path]
    loc, msg = problem(spec("hf", f"hf:{bert}", "causal_lm", **text), roots)
    assert loc == ["training", "task"] and "'bert' model is a bidirectional encoder" in msg
    assert str(bert) in msg
    loc, msg = problem(spec("npy", f"hf:{bert}", "causal_lm", x=arrays["x"]), roots)
    assert loc == ["training", "task"] and "bidirectional encoder" in msg
    loc, msg = problem(spec("hf", f"hf:{vit}", "classification", **text), roots)
    assert loc == ["training", "task"] and "'vit' model reads images, not text" in msg
    loc, msg = problem(spec("npy", f"hf:{gpt2}", "classification", **arrays), roots)
    assert loc == ["training", "task"] and "'gpt2' model reads token ids" in msg
    # What each can do passes: a decoder for causal_lm, an encoder for classification, images.
    datapaths.check_spec(spec("hf", f"hf:{gpt2}", "causal_lm", **text), roots)
    datapaths.check_spec(spec("hf", f"hf:{bert}", "classification", **text), roots)
    datapaths.check_spec(spec("npy", f"hf:{vit}", "classification", **arrays), roots)
    # BERT configured as a decoder (is_decoder) is a causal LM in transformers.
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "is_decoder": True}))
    datapaths.check_spec(spec("hf", f"hf:{bert}", "causal_lm", **text), roots)
    (bert / "config.json").unlink()
    loc, msg = problem(spec("hf", f"hf:{bert}", "classification", **text), roots)
    assert loc == ["model", "arch"] and "no config.json" in msg


def test_fashion_mnist_names_the_package_or_the_folder(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    loc, msg = problem(spec("fashion-mnist", root=str(tmp_path)), [tmp_path])
    assert loc == ["data", "kwargs", "root"] and "lacks train-images-idx3-ubyte.gz" in msg
    monkeypatch.setattr(catalog, "FASHION_MNIST_DIR", str(tmp_path / "not-installed"))
    loc, msg = problem(spec("fashion-mnist"), [])
    assert loc == ["data", "dataset"] and "apt-get install dataset-fashion-mnist" in msg


def test_unusable_paths_are_field_errors_not_crashes(tmp_path: Path) -> None:
    for value in ("~nobody-here/x.npy", "a" * 5000 + ".npy", "/" + "b" * 300 + "/x.npy"):
        with pytest.raises(datapaths.PathError) as info:
            datapaths.check_spec(spec("npy", x=value, y=value), [tmp_path])
        assert info.value.loc == ["data", "kwargs", "x"], value[:20]
