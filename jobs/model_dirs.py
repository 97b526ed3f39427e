"""Hugging Face model folders ('hf:/path'): what the API can tell from the files, without torch
or transformers (importing transformers' model tables loads torch).

A folder needs config.json with a model_type, .safetensors weights when it starts pretrained,
and a tokenizer for text. Its config also says whether the model can do the job's task:
- text (token ids) or images: a config with `vocab_size` and no image fields reads token ids,
  one with `image_size` / `num_channels` and no `vocab_size` reads images;
- causal_lm needs a decoder: the bidirectional encoders below see every token, so next-token
  training would read the answer (transformers builds a causal LM from some of them only as a
  decoder variant, with `is_decoder: true` in the config), and the others have no LM head.
What a config cannot show (a head transformers lacks for a model type) the worker still refuses
before training, with the same rule and the type tables transformers has.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

Loc = list[str | int]

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model",
                   "spiece.model", "sentencepiece.bpe.model")
# Bidirectional encoders (model_type as in config.json).
ENCODER_TYPES = frozenset({
    "albert", "bert", "big_bird", "camembert", "canine", "convbert", "data2vec-text", "deberta",
    "deberta-v2", "distilbert", "electra", "ernie", "esm", "fnet", "funnel", "ibert",
    "layoutlm", "longformer", "luke", "markuplm", "megatron-bert", "mobilebert",
    "modernbert", "mpnet", "nomic_bert", "nystromformer", "rembert", "roberta",
    "roberta-prelayernorm", "roc_bert", "roformer", "splinter", "squeezebert", "tapas",
    "xlm-roberta", "xlm-roberta-xl", "xmod", "yoso",
})
IMAGE_FIELDS = ("image_size", "num_channels")


class ModelDirError(ValueError):
    """A problem with the model folder, for the field `loc` (as datapaths.PathError)."""

    def __init__(self, loc: Loc, msg: str) -> None:
        super().__init__(f"{'.'.join(map(str, loc))}: {msg}")
        self.loc, self.msg = loc, msg


def reads(config: dict[str, Any]) -> str | None:
    """'text', 'images', or None when the config does not say (multimodal, or minimal)."""
    text = "vocab_size" in config
    image = any(k in config for k in IMAGE_FIELDS)
    if text and not image:
        return "text"
    if image and not text:
        return "images"
    return None


def task_problem(config: dict[str, Any], task: str, text: bool) -> str | None:
    """Why a model of this config cannot do `task` on this data (`text`: token ids, from a
    text dataset or causal_lm on arrays), or None when nothing in the config says so."""
    kind = str(config.get("model_type") or "?")
    tokens = text or task == "causal_lm"
    takes = reads(config)
    if tokens and takes == "images":
        return f"a '{kind}' model reads images, not text: training.task '{task}' needs a text model"
    if not tokens and takes == "text":
        return (f"a '{kind}' model reads token ids: training.task '{task}' on image or array "
                "data needs an image model (or text data, dataset 'hf')")
    if task == "causal_lm" and kind in ENCODER_TYPES and not config.get("is_decoder"):
        return (f"a '{kind}' model is a bidirectional encoder: it sees the tokens it would "
                "predict, so it cannot do training.task 'causal_lm'; use a decoder (GPT-2, "
                "Llama, ...) or a config with is_decoder true")
    return None


def read_config(path: Path) -> dict[str, Any]:
    """config.json of a model folder; ModelDirError naming model.arch when absent or bad."""
    loc: Loc = ["model", "arch"]
    config = path / "config.json"
    if not config.is_file():
        raise ModelDirError(loc, f"{path} is not a Hugging Face model folder: no config.json")
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError) as exc:
        raise ModelDirError(loc, f"cannot read {config}: {exc}") from None
    if not isinstance(data, dict) or not data.get("model_type"):
        raise ModelDirError(loc, f"{config} has no model_type")
    return data


def tokenizer_problem(path: Path) -> str | None:
    """What is missing from the folder's tokenizer files, or None."""
    present = [f for f in TOKENIZER_FILES if (path / f).is_file()]
    if not present:
        return (f"{path} has no tokenizer ({', '.join(TOKENIZER_FILES)}); save the tokenizer "
                "beside the model (tokenizer.save_pretrained)")
    if present == ["vocab.json"] and not (path / "merges.txt").is_file():
        return (f"{path} has vocab.json but no merges.txt: a byte-pair tokenizer needs both "
                "(or tokenizer.json); save the tokenizer again with save_pretrained")
    return None


def check_model_dir(path: Path, pretrained: bool, text: bool,
                    task: str = "classification") -> dict[str, Any]:
    """The folder's config; ModelDirError for the first problem (model.arch, or training.task
    for a task the model cannot do)."""
    loc: Loc = ["model", "arch"]
    if not path.is_dir():
        raise ModelDirError(loc, f"{path} is not a directory" if path.exists()
                            else f"{path} does not exist")
    if not os.access(path, os.R_OK | os.X_OK):
        raise ModelDirError(loc, f"{path} is not readable")
    config = read_config(path)
    problem = task_problem(config, task, text)
    if problem is not None:
        raise ModelDirError(["training", "task"], f"{problem} (model.arch {path})")
    if pretrained and not any(path.glob("*.safetensors")):
        raise ModelDirError(loc, f"{path} has no .safetensors weights (other formats are never "
                            "unpickled); save with safe_serialization, or set model.kwargs."
                            "pretrained false to start from the config")
    if text:
        missing = tokenizer_problem(path)
        if missing is not None:
            raise ModelDirError(loc, missing)
    return config
