"""Hugging Face models from local folders (tiny ones built from configs here) and text tables,
never downloaded: heads per task, GPT-2's Conv1D made maskable, and the errors that name what
is missing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from spartan.layout import maskable_weights
from spartan_service.worker.storage import open_storage
from spartan_service.zoo import build_model, hf
from tests import workloads

CPU = torch.device("cpu")


def test_gpt2_conv1d_becomes_linear_with_the_same_outputs(tmp_path: Path) -> None:
    from transformers import GPT2LMHeadModel

    folder = workloads.tiny_gpt2(tmp_path / "gpt2")
    reference = GPT2LMHeadModel.from_pretrained(folder).eval()
    model = build_model(f"hf:{folder}", {}, None, 0, "causal_lm", True, [tmp_path]).eval()
    ids = torch.randint(0, 20, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(hf.logits(model(ids)), reference(ids).logits)
    names = set(maskable_weights(model))
    assert "transformer.h.0.attn.c_attn.weight" in names and "lm_head.weight" in names
    assert model.lm_head.weight is not model.transformer.wte.weight  # masking spares the table
    assert not any(type(m).__name__ == "Conv1D" for m in model.modules())


def test_heads_follow_the_task_and_the_data(tmp_path: Path) -> None:
    bert = workloads.tiny_bert(tmp_path / "bert")
    cls = build_model(f"hf:{bert}", {}, None, 3, "classification", True, [tmp_path])
    assert type(cls).__name__ == "BertForSequenceClassification" and cls.config.num_labels == 3
    reg = build_model(f"hf:{bert}", {"pretrained": False}, None, 1, "regression", True,
                      [tmp_path])
    assert reg.config.problem_type == "regression"
    vit = workloads.tiny_vit(tmp_path / "vit", size=8, channels=3)
    image = build_model(f"hf:{vit}", {}, (3, 8, 8), 2, "classification", False, [tmp_path])
    assert hf.logits(image(torch.zeros(2, 3, 8, 8))).shape == (2, 2)
    assert all(isinstance(m, nn.Module) for m in (cls, reg, image))


def test_errors_name_what_is_missing(tmp_path: Path) -> None:
    bert = workloads.tiny_bert(tmp_path / "bert", with_tokenizer=False)
    vit = workloads.tiny_vit(tmp_path / "vit")
    roots = [tmp_path]
    with pytest.raises(ValueError, match="model.arch: .* has no tokenizer"):
        hf.load_tokenizer(bert)
    with pytest.raises(ValueError, match="training.task: a 'bert' model reads token ids"):
        build_model(f"hf:{bert}", {}, (3, 8, 8), 2, "classification", False, roots)
    with pytest.raises(ValueError, match="training.task: a 'vit' model reads images"):
        build_model(f"hf:{vit}", {}, None, 0, "causal_lm", True, roots)
    with pytest.raises(ValueError, match="'bert' model is a bidirectional encoder"):
        build_model(f"hf:{bert}", {}, None, 0, "causal_lm", True, roots)
    with pytest.raises(ValueError, match="the model expects 8x8"):
        build_model(f"hf:{vit}", {}, (3, 16, 16), 2, "classification", False, roots)
    with pytest.raises(ValueError, match="is not in this worker's Hugging Face cache"):
        build_model("hf:nobody/no-such-model", {}, None, 2, "classification", True, roots)
    with pytest.raises(ValueError, match="not a Hugging Face model folder"):
        build_model(f"hf:{tmp_path}", {}, None, 2, "classification", True, roots)
    with pytest.raises(ValueError, match="outside the data roots"):
        build_model(f"hf:{bert}", {}, None, 2, "classification", True, [tmp_path / "vit"])
    (bert / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="no .safetensors weights"):
        build_model(f"hf:{bert}", {}, None, 2, "classification", True, roots)


def test_text_batches_for_classification_and_causal_lm(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    bert = workloads.tiny_bert(tmp_path / "bert")
    gpt2 = workloads.tiny_gpt2(tmp_path / "gpt2")
    texts, labels = workloads.sentences(20)
    names = ["pos" if v else "neg" for v in labels]
    pq.write_table(pa.table({"text": texts, "label": names}), tmp_path / "t.parquet")
    data = open_storage("hf", {"path": str(tmp_path / "t.parquet"), "max_length": 4},
                        "classification", 0.25, 0, [tmp_path], hf.load_tokenizer(bert),
                        tmp_path / "cache")
    assert data.outputs == 2 and data.text and len(data.val_index) == 5
    inputs, y = next(iter(data.batches(8, 0, CPU).epoch(0)))
    assert inputs["input_ids"].shape[1] <= 4 and set(y.tolist()) <= {0, 1}  # neg=0, pos=1
    lm = open_storage("hf", {"path": str(tmp_path / "t.parquet")}, "causal_lm", 0.25, 0,
                      [tmp_path], hf.load_tokenizer(gpt2), tmp_path / "cache")
    inputs, target = next(iter(lm.batches(8, 0, CPU).epoch(0)))
    mask = inputs["attention_mask"].bool()
    assert torch.equal(target[mask], inputs["input_ids"][mask])
    assert bool((target[~mask] == -100).all())  # padding is never a target
    with pytest.raises(ValueError, match="data.kwargs.label_column: column 'stars' is not"):
        open_storage("hf", {"path": str(tmp_path / "t.parquet"), "label_column": "stars"},
                     "classification", 0.25, 0, [tmp_path], hf.load_tokenizer(bert))
    pq.write_table(pa.table({"text": texts, "label": [-1] + labels[1:]}), tmp_path / "n.parquet")
    with pytest.raises(ValueError, match="column .label. holds label -1; class labels must be"):
        open_storage("hf", {"path": str(tmp_path / "n.parquet")}, "classification", 0.25, 0,
                     [tmp_path], hf.load_tokenizer(bert), tmp_path / "cache")


def test_saved_dataset_dict_with_named_splits(tmp_path: Path) -> None:
    import datasets

    bert = workloads.tiny_bert(tmp_path / "bert")
    texts, labels = workloads.sentences(30)
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["neg", "pos", "meh"])})
    table = datasets.Dataset.from_dict({"text": texts, "label": labels}, features=features)
    datasets.DatasetDict({"train": table.select(range(24)),
                          "test": table.select(range(24, 30))}).save_to_disk(tmp_path / "dd")
    data = open_storage("hf", {"path": str(tmp_path / "dd"), "val_split": "test"},
                        "classification", 0.25, 0, [tmp_path], hf.load_tokenizer(bert))
    assert data.outputs == 3  # the ClassLabel's names, used or not
    assert len(data.train_index) == 24 and len(data.val_index) == 6
    with pytest.raises(ValueError, match="split 'dev' is not in"):
        open_storage("hf", {"path": str(tmp_path / "dd"), "val_split": "dev"},
                     "classification", 0.25, 0, [tmp_path], hf.load_tokenizer(bert))
