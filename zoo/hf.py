"""Hugging Face transformers models for `"arch": "hf:NAME_OR_PATH"`, never downloaded.

A path (under the data roots) is a folder written by `save_pretrained`; a name is looked up in
the worker's local Hugging Face cache only (`local_files_only`, whatever HF_HUB_OFFLINE says).
The job's task and data pick the head: sequence classification (text; regression is one output
with problem_type "regression"), image classification (images and arrays), causal LM. Weights
load from .safetensors only (never unpickled), or the model starts from its config.

Made maskable by spartan.hf.make_maskable (GPT-2's Conv1D becomes nn.Linear, a tied LM head is
untied); spartan.hf.describe / rebuild let load_sparse rebuild the model from its config alone.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from spartan.hf import HEADS, make_maskable
from spartan_service.jobs import datapaths, model_dirs

log = logging.getLogger(__name__)
Shape = tuple[int, ...]


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ValueError("model.arch 'hf:...' needs the transformers package on the worker "
                         "(pip install 'spartan-service[hf]')") from None
    transformers.logging.set_verbosity_error()  # its warnings go to the job log as noise
    transformers.utils.logging.disable_progress_bar()
    return transformers


def model_dir(name: str, roots: list[Path]) -> Path:
    """The folder of an 'hf:' model: a path under the data roots, or a cached hub name."""
    if datapaths.hf_model_dir("hf:" + name) is not None:
        try:
            path = datapaths.resolve_under(name, roots)
        except ValueError as exc:
            raise ValueError(f"model.arch: {exc}") from None
        if not (path / "config.json").is_file():
            raise ValueError(f"model.arch: {path} is not a Hugging Face model folder (no "
                             "config.json)")
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(name, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError) as exc:
        from huggingface_hub.constants import HF_HUB_CACHE

        raise ValueError(f"model.arch: '{name}' is not in this worker's Hugging Face cache "
                         f"({os.environ.get('HF_HUB_CACHE', HF_HUB_CACHE)}), and workers never "
                         f"download ({type(exc).__name__}); save the model under a data root "
                         "and give its path, 'hf:/path/to/model'") from None


def load_tokenizer(folder: Path) -> Any:
    """The model's tokenizer, with a padding token (the end-of-text one if it has none)."""
    # Batches are tokenised one at a time, often in DataLoader workers forked after the
    # tokenizer was used here: its thread pool would be disabled there with a warning anyway.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    transformers = _transformers()
    missing = model_dirs.tokenizer_problem(folder)
    if missing is not None:
        raise ValueError(f"model.arch: {missing}; text data is tokenised with the model's own "
                         "tokenizer")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"model.arch: cannot load the tokenizer in {folder}: {exc}") from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"model.arch: the tokenizer in {folder} has neither a padding nor "
                             "an end-of-text token to pad batches with")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def head(task: str, text: bool) -> str:
    """The model head (a key of spartan.hf.HEADS) for the job's task and data."""
    if task == "causal_lm":
        return "causal_lm"
    return "sequence_classification" if text else "image_classification"


def _auto_class(transformers: Any, task: str, text: bool) -> tuple[Any, str]:
    name = head(task, text)
    return getattr(transformers, HEADS[name]), name.replace("_", " ").replace(
        "causal lm", "causal language modelling")


def load_model(folder: Path, task: str, text: bool, outputs: int, pretrained: bool,
               input_shape: Shape | None = None, pad_token_id: int | None = None) -> nn.Module:
    """A transformers model from `folder` with the head for `task` and `outputs` labels
    (classes, or regression targets)."""
    transformers = _transformers()
    try:
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"model.arch: {folder} is not a Hugging Face model folder: "
                         f"{exc}") from None
    problem = model_dirs.task_problem(config.to_dict(), task, text)
    if problem is not None:
        raise ValueError(f"training.task: {problem} (model.arch {folder})")
    auto, what = _auto_class(transformers, task, text)
    if type(config) not in auto._model_mapping:
        raise ValueError(f"model.arch: a '{config.model_type}' model cannot do {what} "
                         f"(training.task '{task}' on this data); transformers has no such "
                         f"head for it")
    if task != "causal_lm":
        config.num_labels = outputs
        config.problem_type = ("regression" if task == "regression"
                               else "single_label_classification")
        if pad_token_id is not None and getattr(config, "pad_token_id", None) is None:
            config.pad_token_id = pad_token_id  # GPT-2 style heads pool at the last non-pad
    if not text and input_shape is not None:
        _check_image_shape(config, input_shape)
    if pretrained:
        if not any(folder.glob("*.safetensors")):
            raise ValueError(f"model.arch: {folder} has no .safetensors weights (other formats "
                             "are never unpickled); set model.kwargs.pretrained false to start "
                             "from the config")
        try:
            model = auto.from_pretrained(folder, config=config, local_files_only=True,
                                         use_safetensors=True, ignore_mismatched_sizes=True)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ValueError(f"model.arch: cannot load the weights in {folder}: {exc}") from None
    else:
        model = auto.from_config(config)
    model = make_maskable(model)
    log.info("loaded %s (%s, %s) from %s", type(model).__name__, config.model_type,
             "pretrained" if pretrained else "from config", folder)
    return model


def _check_image_shape(config: Any, input_shape: Shape) -> None:
    channels = getattr(config, "num_channels", None)
    size = getattr(config, "image_size", None)
    if len(input_shape) != 3:
        raise ValueError(f"model.arch: an image model needs (C, H, W) inputs, the data has "
                         f"{list(input_shape)}")
    if channels is not None and input_shape[0] != channels:
        raise ValueError(f"data: the images have {input_shape[0]} channels, the model expects "
                         f"{channels} (imagefolder kwargs.channels)")
    if isinstance(size, int) and tuple(input_shape[1:]) != (size, size):
        raise ValueError(f"data: the images are {input_shape[1]}x{input_shape[2]}, the model "
                         f"expects {size}x{size} (imagefolder kwargs.size)")


def logits(out: Any) -> Tensor:
    """A model's prediction tensor: transformers models return an output object."""
    return out if isinstance(out, Tensor) else out.logits
