"""Where an attention module keeps its q / k / v / output projections and its head size.

The layouts of Hugging Face models:
- one module: q_proj / k_proj / v_proj and o_proj (or out_proj), `head_dim` (Llama, Qwen,
  Mistral, ...; spartan.shrink.ShrunkAttention);
- BERT's: a parent (BertAttention) whose `self` holds query / key / value and
  `attention_head_size`, and whose `output.dense` projects the heads back;
- GPT-2's: one fused c_attn (q, k, v stacked, split at `split_size`) and c_proj, `head_dim`
  (its Conv1D made nn.Linear by spartan.hf.make_maskable).
nn.MultiheadAttention (packed in_proj) is handled where it is used. Each role is a dotted path
below the attention module ("qkv" for the fused one), so that the Sparsifier hooks, `shrink`
replaces and the masks name the real submodule.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

ROLES = ("q", "k", "v", "o")
_FUSED = {"qkv": "c_attn", "o": "c_proj", "head_dim": "head_dim"}
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
    fused, out = _get(module, "c_attn"), _get(module, "c_proj")
    if isinstance(fused, nn.Linear) and isinstance(out, nn.Linear) and \
            getattr(module, "split_size", None) == out.in_features and \
            fused.out_features == 3 * out.in_features:
        return _FUSED
    return None


def _fused(module: nn.Module) -> nn.Linear | None:
    paths = layout(module)
    out = None if paths is None or "qkv" not in paths else _get(module, paths["qkv"])
    return out if isinstance(out, nn.Linear) else None


def qkv(module: nn.Module) -> list[tuple[Tensor, Tensor | None]]:
    """(weight, bias) of the q, k and v projections, rows by head (views of a fused one:
    writes reach it)."""
    fused = _fused(module)
    if fused is None:
        return [(p.weight, p.bias) for p in (projection(module, r) for r in "qkv")]
    e = fused.out_features // 3
    b = fused.bias
    return [(fused.weight[i * e:(i + 1) * e], None if b is None else b[i * e:(i + 1) * e])
            for i in range(3)]


# Widths from the Linear modules' attributes, not their weights: while torch.fx traces, a
# parameter read is a Proxy, and a Proxy's shape cannot steer control flow.
def qkv_out(module: nn.Module) -> tuple[int, int, int]:
    """The q, k and v projections' output widths."""
    fused = _fused(module)
    if fused is not None:
        e = fused.out_features // 3
        return e, e, e
    q, k, v = (projection(module, r).out_features for r in "qkv")
    return q, k, v


def embed_in(module: nn.Module) -> int:
    """The embedding width the projections read."""
    fused = _fused(module)
    return (fused if fused is not None else projection(module, "q")).in_features


def has_bias(module: nn.Module) -> bool:
    fused = _fused(module)
    return (fused if fused is not None else projection(module, "q")).bias is not None


def shrink_qkv(module: nn.Module, rows: Tensor, kv_rows: Tensor,
               cut: Callable[[nn.Linear, list[int] | None, list[int] | None], nn.Linear]
               ) -> None:
    """Keep rows `rows` of q and `kv_rows` of k and v (cut(linear, cols, rows) makes the
    smaller Linear); a fused projection keeps them in each third and its split moves."""
    fused = _fused(module)
    if fused is None:
        for role, kept in (("q", rows), ("k", kv_rows), ("v", kv_rows)):
            set_projection(module, role, cut(projection(module, role), None, kept.tolist()))
        return
    e = fused.out_features // 3
    keep = [*rows.tolist(), *(kv_rows + e).tolist(), *(kv_rows + 2 * e).tolist()]
    set_projection(module, "qkv", cut(fused, None, keep))
    setattr(module, "split_size", len(rows))  # noqa: B010 (nn.Module typing)


def projection(module: nn.Module, role: str) -> nn.Linear:
    """The nn.Linear of `role` (q, k, v or o; qkv of a fused layout)."""
    out = _get(module, projection_path(module, role))
    assert isinstance(out, nn.Linear)
    return out


def projection_path(module: nn.Module, role: str) -> str:
    paths = layout(module)
    if paths is None:
        raise ValueError(f"{type(module).__name__} has no q / k / v / o projections we know")
    return paths[role]


def set_projection(module: nn.Module, role: str, new: nn.Linear) -> None:
    """Replace the projection of `role` where it lives."""
    set_path(module, projection_path(module, role), new)


def set_path(module: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, attr = path.rpartition(".")
    parent = module.get_submodule(parent_path) if parent_path else module
    setattr(parent, attr, new)


def head_size(module: nn.Module) -> int | None:
    paths = layout(module)
    value = None if paths is None else _get(module, paths["head_dim"])
    return value if isinstance(value, int) and value > 0 else None


def head_owner(module: nn.Module) -> nn.Module:
    """The module whose attributes count the heads (num_heads, num_attention_heads, ...)."""
    paths = layout(module)
    assert paths is not None
    parent_path = paths.get("q", paths.get("qkv", "")).rpartition(".")[0]
    return module.get_submodule(parent_path) if parent_path else module
