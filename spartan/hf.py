"""Hugging Face transformers models in spartan: made maskable, described, and rebuilt from that
description (transformers is imported only to rebuild; nothing here downloads or unpickles).

Made maskable: GPT-2's `Conv1D` layers (x @ W + b, W stored input-major) become `nn.Linear` with
the transposed weight, so the Sparsifier, the cost models and the sparse kernels see the layers
they know; an output embedding tied to the input one is untied, so that masking the LM head does
not zero the embedding table. The model's state_dict follows these changes.

Described: `{"head": ..., "config": config.to_dict()}`, plain JSON stored in the metadata of
model.sparse.safetensors, from which `rebuild` makes the same (maskable) module with fresh
weights for load_sparse to fill.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

# The model heads a description may name, and the transformers auto class of each.
HEADS = {"causal_lm": "AutoModelForCausalLM",
         "sequence_classification": "AutoModelForSequenceClassification",
         "image_classification": "AutoModelForImageClassification"}


def make_maskable(model: nn.Module) -> nn.Module:
    """Conv1D -> nn.Linear (same outputs), and the LM head untied from the input embedding."""
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if type(child).__name__ == "Conv1D" and hasattr(child, "nf"):
                weight = child.weight  # (in, out)
                assert isinstance(weight, Tensor)
                linear = nn.Linear(weight.shape[0], weight.shape[1], bias=child.bias is not None,
                                   device=weight.device, dtype=weight.dtype)
                with torch.no_grad():
                    linear.weight.copy_(weight.t())
                    if isinstance(child.bias, Tensor):
                        linear.bias.copy_(child.bias)
                setattr(parent, child_name, linear)
    get_out = getattr(model, "get_output_embeddings", None)
    get_in = getattr(model, "get_input_embeddings", None)
    out_emb = get_out() if callable(get_out) else None
    in_emb = get_in() if callable(get_in) else None
    if out_emb is not None and in_emb is not None and out_emb.weight is in_emb.weight:
        out_emb.weight = nn.Parameter(in_emb.weight.detach().clone())
        config = getattr(model, "config", None)
        if config is not None:
            config.tie_word_embeddings = False
    return model


def describe(model: nn.Module, head: str) -> dict[str, Any]:
    """What rebuilds `model` (a transformers model with the given head): head and config."""
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; valid: {', '.join(HEADS)}")
    config = getattr(model, "config", None)
    if config is None or not callable(getattr(config, "to_dict", None)):
        raise ValueError(f"{type(model).__name__} is not a transformers model (no config)")
    return {"head": head, "config": config.to_dict()}


def rebuild(description: dict[str, Any]) -> nn.Module:
    """The maskable module `describe` described, with fresh weights."""
    try:
        import transformers
    except ImportError:
        raise ValueError("this file holds a Hugging Face model: rebuilding it needs the "
                         "transformers package (pip install transformers)") from None
    head = description.get("head")
    config = description.get("config")
    if head not in HEADS or not isinstance(config, dict):
        raise ValueError(f"bad Hugging Face model description (head {head!r}, config "
                         f"{type(config).__name__})")
    values = dict(config)
    model_type = values.pop("model_type", None)
    try:
        cfg = transformers.AutoConfig.for_model(model_type, **values)
        auto = getattr(transformers, HEADS[head])
        model = auto.from_config(cfg)
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"cannot rebuild the '{model_type}' model ({HEADS[head]}): "
                         f"{exc}") from None
    return make_maskable(model)
