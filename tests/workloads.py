"""Small real workloads written by the tests themselves (nothing is downloaded): Hugging Face
models built from tiny configs with a word-level tokenizer, text tables, image folders and .npy
arrays whose labels the inputs determine (so that a few steps of training learn something)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def need_fashion_mnist() -> None:
    """Skip without Debian's dataset-fashion-mnist package; under CI=true, fail instead."""
    if (FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file():
        return
    reason = ("Debian's dataset-fashion-mnist package is not installed (make setup installs "
              "it: apt-get install dataset-fashion-mnist)")
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI=true: the Fashion-MNIST path must be tested")
    pytest.skip(reason)

WORDS = ["good", "great", "fine", "happy", "nice", "bad", "awful", "poor", "sad", "ugly",
         "the", "movie", "was", "very", "really", "a", "film", "plot"]
POSITIVE, NEGATIVE = WORDS[:5], WORDS[5:10]
FILLER = WORDS[10:]


def sentences(n: int, seed: int = 0) -> tuple[list[str], list[int]]:
    """Short reviews labelled 1 when their sentiment word is positive."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for _ in range(n):
        label = int(rng.integers(0, 2))
        word = rng.choice(POSITIVE if label else NEGATIVE)
        filler = list(rng.choice(FILLER, size=int(rng.integers(2, 6))))
        filler.insert(int(rng.integers(0, len(filler) + 1)), str(word))
        texts.append(" ".join(filler))
        labels.append(label)
    return texts, labels


def tokenizer(folder: Path, with_pad: bool = True) -> Any:
    """A word-level fast tokenizer over WORDS, saved to `folder`; without a pad token (as
    GPT-2's) when with_pad is false."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "<eos>"]
    vocab = {w: i for i, w in enumerate(special + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="<eos>",
                                   **({"pad_token": "[PAD]"} if with_pad else {}))
    fast.save_pretrained(folder)
    return fast


def tiny_bert(folder: Path, num_labels: int = 2, with_tokenizer: bool = True) -> Path:
    from transformers import BertConfig, BertForSequenceClassification

    folder.mkdir(parents=True, exist_ok=True)
    config = BertConfig(vocab_size=len(WORDS) + 5, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
                        pad_token_id=0)
    config.num_labels = num_labels
    BertForSequenceClassification(config).save_pretrained(folder)
    if with_tokenizer:
        tokenizer(folder)
    return folder


def tiny_gpt2(folder: Path) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    folder.mkdir(parents=True, exist_ok=True)
    config = GPT2Config(vocab_size=len(WORDS) + 5, n_positions=64, n_embd=32, n_layer=2,
                        n_head=2, bos_token_id=4, eos_token_id=4)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer(folder, with_pad=False)
    return folder


def tiny_vit(folder: Path, size: int = 8, channels: int = 3) -> Path:
    from transformers import ViTConfig, ViTForImageClassification

    folder.mkdir(parents=True, exist_ok=True)
    config = ViTConfig(image_size=size, patch_size=4, num_channels=channels, hidden_size=32,
                       num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    ViTForImageClassification(config).save_pretrained(folder)
    return folder


def text_parquet(path: Path, n: int = 96, seed: int = 0, label: str = "label") -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts, labels = sentences(n, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": texts, label: labels}), path)
    return path


def image_folder(root: Path, per_class: int = 12, size: int = 8, seed: int = 0) -> Path:
    """Two classes of PNGs: bright squares on the left half or on the right half."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for label, name in enumerate(["left", "right"]):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            cols = slice(0, size // 2) if label == 0 else slice(size // 2, size)
            img[:, cols] += 150
            suffix = "png" if i % 2 else "jpg"
            Image.fromarray(img).save(root / name / f"{i}.{suffix}")
    return root


def npy_pair(folder: Path, n: int = 256, dim: int = 12, classes: int = 3, seed: int = 0,
             regression: bool = False, shards: int = 1) -> tuple[Path, Path]:
    """x of shape (n, dim), and y: the argmax class of a fixed linear map (or its first
    output, for regression). With shards > 1, folders x/ and y/ of that many .npy files."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    x = rng.standard_normal((n, dim)).astype(np.float32) * 3 + 1
    w = np.random.default_rng(1234).standard_normal((dim, classes))  # one teacher for all
    y = (x @ w)[:, 0].astype(np.float32) if regression else (x @ w).argmax(1).astype(np.int64)
    if shards == 1:
        np.save(folder / "x.npy", x)
        np.save(folder / "y.npy", y)
        return folder / "x.npy", folder / "y.npy"
    for name, array in (("x", x), ("y", y)):
        (folder / name).mkdir(exist_ok=True)
        for i, part in enumerate(np.array_split(array, shards)):
            np.save(folder / name / f"part-{i:03d}.npy", part)
    return folder / "x", folder / "y"
