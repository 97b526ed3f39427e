"""Where an attention module keeps its q / k / v / output projections and its head size.

Two layouts of separate nn.Linear projections, as Hugging Face models lay them out:
- one module: q_proj / k_proj / v_proj and o_proj (or out_proj), `head_dim` (Llama, Qwen,
  Mistral, ...; spartan.shrink.ShrunkAttention);
- BERT's: a parent (BertAttention) whose `self` holds query / key / value and
  `attention_head_size`, and whose `output.dense` projects the heads back.
nn.MultiheadAttention (packed in_proj) is handled where it is used. Each role is a dotted path
below the attention module, so that the Sparsifier hooks, `shrink` replaces and the masks name
the real submodule.
"""

from __future__ import annotations

from torch import nn

ROLES = ("q", "k", "v", "o")
_LAYOUTS = (
    {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj", "head_dim": "head_dim"},
    {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "out_proj", "head_dim": "head_dim"},
    {"q": "self.query", "k": "self.key", "v": "self.value", "o": "output.dense",
     "head_dim": "self.attention_head_size"},
)


def _get(module: nn.Module, path: str) -> object:
    obj: object = module
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def layout(module: nn.Module) -> dict[str, str] | None:
    """The layout (role -> dotted path) whose projections are all nn.Linear, else None."""
    if isinstance(module, nn.MultiheadAttention):
        return None
    for paths in _LAYOUTS:
        if all(isinstance(_get(module, paths[r]), nn.Linear) for r in ROLES):
            return paths
    return None


def projection(module: nn.Module, role: str) -> nn.Linear:
    """The nn.Linear of `role` (q, k, v or o)."""
    paths = layout(module)
    if paths is None:
        raise ValueError(f"{type(module).__name__} has no separate q / k / v / o projections")
    out = _get(module, paths[role])
    assert isinstance(out, nn.Linear)
    return out


def projection_path(module: nn.Module, role: str) -> str:
    paths = layout(module)
    if paths is None:
        raise ValueError(f"{type(module).__name__} has no separate q / k / v / o projections")
    return paths[role]


def set_projection(module: nn.Module, role: str, new: nn.Linear) -> None:
    """Replace the projection of `role` where it lives."""
    parent_path, _, attr = projection_path(module, role).rpartition(".")
    parent = module.get_submodule(parent_path) if parent_path else module
    setattr(parent, attr, new)


def head_size(module: nn.Module) -> int | None:
    paths = layout(module)
    value = None if paths is None else _get(module, paths["head_dim"])
    return value if isinstance(value, int) and value > 0 else None


def head_owner(module: nn.Module) -> nn.Module:
    """The module whose attributes count the heads (num_heads, num_attention_heads, ...)."""
    parent_path = projection_path(module, "q").rpartition(".")[0]
    return module.get_submodule(parent_path) if parent_path else module
