"""Physically smaller models: `shrink` removes the channels, hidden units and heads nobody reads.

An item (spartan.channels) is removed when every weight that reads it is exactly zero: the
columns of its consumers (a head: its columns of the output projection). Its producers' rows,
BatchNorm entries and consumer columns then go, which leaves the outputs unchanged up to
floating-point summation order. `Sparsifier.finalize()` with structure="channels" zeroes all
weights of the removed items, so its model qualifies; so does any model with such zeros.
Each layer group keeps at least one item (no zero-width layer).

The plan (which channels each module keeps, JSON) rebuilds the small model from the original
architecture: `apply_plan(build(...), plan)` then `load_state_dict`, which is how
`spartan.load_sparse` reads `save_shrunk`'s safetensors file (no pickle).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spartan.attention_layout import (
    head_owner,
    head_size,
    projection,
    projection_path,
    qkv_out,
    set_path,
    shrink_qkv,
)
from spartan.channel_graph import kv_groups
from spartan.channel_weights import out_in, out_proj_weight, row_col_sq
from spartan.channels import ChannelGraph, trace_channels
from spartan.kernels import replace_module

CONVS = (nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d, nn.ConvTranspose2d)
TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d)
PLAN_ATTR = "spartan_shrink_plan"


def removable_items(graph: ChannelGraph) -> Tensor:
    """Bool per item: every weight reading it is zero (and something reads it)."""
    n = graph.n_items
    read = torch.zeros(n + 1, dtype=torch.float64)
    readers = torch.zeros(n + 1, dtype=torch.long)
    with torch.no_grad():
        for lay in graph.layers.values():
            if lay.kind == "attention":
                h = lay.out_items.numel()
                cols = out_proj_weight(lay.module).detach().square().sum(0).view(h, -1).sum(1)
                idx = torch.where(lay.out_items >= 0, lay.out_items, n).cpu()
            else:
                _, maybe = row_col_sq(lay)
                if maybe is None:
                    continue
                cols = maybe
                idx = torch.where(lay.in_items >= 0, lay.in_items, n).cpu()
            read.index_add_(0, idx, cols.detach().double().cpu())
            readers.index_add_(0, idx, torch.ones_like(idx))
    drop = (read[:n] == 0) & (readers[:n] > 0)
    for members in graph.groups:  # never a zero-width layer
        if bool(drop[members].all()):
            drop[members[0]] = False
    return drop


def shrink_plan(graph: ChannelGraph, drop: Tensor) -> dict[str, Any]:
    """Kept channel indices of every module that changes (JSON-able)."""
    n = graph.n_items
    keep = torch.cat([~drop, torch.ones(1, dtype=torch.bool)])

    def kept(items: Tensor) -> list[int] | None:
        k = keep[torch.where(items >= 0, items, n).cpu()]
        return None if bool(k.all()) else torch.nonzero(k).squeeze(1).tolist()

    layers: dict[str, Any] = {}
    for name, lay in graph.layers.items():
        if lay.kind == "attention":
            heads = kept(lay.out_items)
            if heads is not None:
                layers[name] = {"kind": "attention", "heads": heads}
            continue
        k_in, k_out = kept(lay.in_items), kept(lay.out_items)
        if k_in is not None or k_out is not None:
            layers[name] = {"kind": lay.kind, "in": k_in, "out": k_out}
    norms = {name: k for name, norm in graph.norms.items()
             if (k := kept(norm.items)) is not None}
    return {"version": 1, "layers": layers, "norms": norms}


def shrink(model: nn.Module, example_inputs: Any) -> nn.Module:
    """A plain, physically smaller copy of `model` without the items nobody reads (module
    doc). Its plan is kept on it (attribute `spartan_shrink_plan`) for `save_shrunk`."""
    work = copy.deepcopy(model)
    graph = trace_channels(work, example_inputs)
    plan = shrink_plan(graph, removable_items(graph))
    apply_plan(work, plan)
    return work


def apply_plan(model: nn.Module, plan: dict[str, Any]) -> nn.Module:
    """Replace the planned modules of `model` (in place) by smaller ones holding the kept
    slices of their weights. Raises ValueError for a plan that does not fit the model."""
    try:
        for name, entry in plan.get("layers", {}).items():
            mod = model.get_submodule(name)
            if entry["kind"] == "attention":
                replace_module(model, name, _shrink_attention(mod, entry["heads"]))
            elif isinstance(mod, nn.Linear):
                replace_module(model, name, _shrink_linear(mod, entry["in"], entry["out"]))
            elif isinstance(mod, CONVS):
                replace_module(model, name, _shrink_conv(mod, entry["in"], entry["out"]))
            else:
                raise ValueError(f"{name} is a {type(mod).__name__}, the plan says "
                                 f"{entry['kind']}")
        for name, keep in plan.get("norms", {}).items():
            replace_module(model, name, _shrink_norm(model.get_submodule(name), keep))
    except (AttributeError, IndexError, KeyError, RuntimeError) as exc:
        raise ValueError(f"the shrink plan does not fit this model: {exc}") from None
    setattr(model, PLAN_ATTR, plan)
    return model


def _idx(keep: list[int] | None, n: int) -> Tensor:
    return torch.arange(n) if keep is None else torch.tensor(keep, dtype=torch.long)


def _like(mod: nn.Module) -> dict[str, Any]:
    w = mod.weight
    return {"device": w.device, "dtype": w.dtype}


def _shrink_linear(mod: nn.Linear, k_in: list[int] | None, k_out: list[int] | None
                   ) -> nn.Linear:
    i, o = _idx(k_in, mod.in_features), _idx(k_out, mod.out_features)
    new = nn.Linear(len(i), len(o), bias=mod.bias is not None, **_like(mod))
    with torch.no_grad():
        new.weight.copy_(mod.weight[o][:, i])
        if mod.bias is not None:
            new.bias.copy_(mod.bias[o])
    new.train(mod.training)
    return new


def conv_like(mod: Any, cin: int, cout: int, groups: int, **kw: Any) -> nn.Module:
    """A conv of `mod`'s type and settings with other widths (transposed ones too)."""
    extra = {"output_padding": mod.output_padding} if isinstance(mod, TRANSPOSED) else {}
    return type(mod)(cin, cout, kernel_size=mod.kernel_size, stride=mod.stride,
                     padding=mod.padding, dilation=mod.dilation, groups=groups,
                     bias=mod.bias is not None, padding_mode=mod.padding_mode, **extra, **kw)


def _shrink_conv(mod: Any, k_in: list[int] | None, k_out: list[int] | None) -> nn.Module:
    cin, cout, g = mod.in_channels, mod.out_channels, mod.groups
    i, o = _idx(k_in, cin), _idx(k_out, cout)
    w = out_in(mod)[o]
    if g == 1:
        w, groups = w[:, i], 1
    elif g == cin:  # depthwise: one group per kept input
        groups = len(i)
    else:  # the same channels kept in every group (coupled)
        per = cin // g
        cols = torch.tensor(sorted({int(c) % per for c in i.tolist()}), dtype=torch.long)
        w, groups = w[:, cols], g
    new = conv_like(mod, len(i), len(o), groups, **_like(mod))
    with torch.no_grad():
        out_in(new).copy_(w)
        if mod.bias is not None:
            new.bias.copy_(mod.bias[o])  # type: ignore[operator]
    new.train(mod.training)
    return new


def _shrink_norm(mod: nn.Module, keep: list[int]) -> nn.Module:
    if not isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
        raise ValueError(f"cannot shrink a {type(mod).__name__}")
    k = torch.tensor(keep, dtype=torch.long)
    new = type(mod)(len(k), mod.eps, mod.momentum, mod.affine, mod.track_running_stats)
    ref = mod.weight if mod.affine else mod.running_mean
    if ref is not None:
        new = new.to(ref.device, ref.dtype)
    with torch.no_grad():
        for attr in ("weight", "bias", "running_mean", "running_var"):
            t = getattr(mod, attr, None)
            if isinstance(t, Tensor):
                getattr(new, attr).copy_(t[k])
        if mod.num_batches_tracked is not None:
            new.num_batches_tracked.copy_(mod.num_batches_tracked)  # type: ignore[union-attr]
    new.train(mod.training)
    return new


class ShrunkAttention(nn.Module):
    """Multi-head attention with some heads removed: q / k / v / out projections of
    heads x head_dim channels around an unchanged embedding width (nn.MultiheadAttention
    ties its heads to the embedding width, so it cannot lose heads). Same call signature;
    returns (output, None). With kv_heads < num_heads, grouped-query attention: k / v have
    kv_heads heads, each shared by num_heads / kv_heads query heads (the layout of Hugging Face
    GQA models, which the structured profiler times)."""

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, bias: bool = True,
                 out_bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 device: Any = None, dtype: Any = None, kv_heads: int | None = None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        kv_heads = kv_heads or num_heads
        if num_heads % kv_heads:
            raise ValueError(f"{num_heads} heads do not split into {kv_heads} kv groups")
        width = num_heads * head_dim
        self.q_proj = nn.Linear(embed_dim, width, bias=bias, **kw)
        self.k_proj = nn.Linear(embed_dim, kv_heads * head_dim, bias=bias, **kw)
        self.v_proj = nn.Linear(embed_dim, kv_heads * head_dim, bias=bias, **kw)
        self.out_proj = nn.Linear(width, embed_dim, bias=out_bias, **kw)
        self.num_heads, self.head_dim, self.kv_heads = num_heads, head_dim, kv_heads
        self.batch_first, self.dropout = batch_first, dropout

    def forward(self, query: Tensor, key: Tensor, value: Tensor,
                key_padding_mask: Tensor | None = None, need_weights: bool = True,
                attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, None]:
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        b, t, s = query.shape[0], query.shape[1], key.shape[1]
        h, d, hk = self.num_heads, self.head_dim, self.kv_heads
        q = self.q_proj(query).view(b, t, h, d).transpose(1, 2)
        k = self.k_proj(key).view(b, s, hk, d).transpose(1, 2)
        v = self.v_proj(value).view(b, s, hk, d).transpose(1, 2)
        mask = _additive(attn_mask, key_padding_mask, q.dtype, b, h, t, s)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal and mask is None, enable_gqa=hk != h)
        out = self.out_proj(out.transpose(1, 2).reshape(b, t, h * d))
        return (out if self.batch_first else out.transpose(0, 1)), None


def _additive(attn_mask: Tensor | None, padding: Tensor | None, dtype: torch.dtype, b: int,
              h: int, t: int, s: int) -> Tensor | None:
    """nn.MultiheadAttention's masks (bool: True = not attended) as one additive mask."""
    out = None
    for m, shape in ((attn_mask, None), (padding, (b, 1, 1, s))):
        if m is None:
            continue
        add = torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(
            m, float("-inf")) if m.dtype == torch.bool else m.to(dtype)
        if shape is not None:
            add = add.view(shape)
        elif add.dim() == 3:  # (b * h, t, s)
            add = add.view(b, h, t, s)
        out = add if out is None else out + add
    return out


def _shrink_attention(mod: nn.Module, heads: list[int]) -> nn.Module:
    if isinstance(mod, nn.MultiheadAttention):
        return _shrink_mha(mod, heads)
    d = head_size(mod)
    if d is not None:  # separate projections (spartan.attention_layout)
        rep = kv_groups(mod)
        old = qkv_out(mod)[0] // d
        kv = sorted({h // rep for h in heads})  # whole groups: len(heads) == rep x len(kv)
        rows, kv_rows = _head_rows(heads, d), _head_rows(kv, d)
        # everything read first: mid-way, a fused layout's widths disagree
        owner, o_path, o = head_owner(mod), projection_path(mod, "o"), projection(mod, "o")
        shrink_qkv(mod, rows, kv_rows, _shrink_linear)
        set_path(mod, o_path, _shrink_linear(o, rows.tolist(), None))
        for attr, before, now in (("num_heads", old, len(heads)),
                                  ("num_attention_heads", old, len(heads)),
                                  ("num_key_value_heads", old // rep, len(kv)),
                                  ("all_head_size", old * d, len(heads) * d)):
            if getattr(owner, attr, None) == before:
                setattr(owner, attr, now)
        return mod
    raise ValueError(f"cannot remove heads of a {type(mod).__name__}")


def _head_rows(heads: list[int], d: int) -> Tensor:
    return (torch.tensor(heads, dtype=torch.long).view(-1, 1) * d + torch.arange(d)).view(-1)


def _shrink_mha(mod: nn.MultiheadAttention, heads: list[int]) -> ShrunkAttention:
    d, e = mod.head_dim, mod.embed_dim
    rows = _head_rows(heads, d)
    w = mod.out_proj.weight
    new = ShrunkAttention(e, len(heads), d, bias=mod.in_proj_bias is not None,
                          out_bias=mod.out_proj.bias is not None, batch_first=mod.batch_first,
                          dropout=mod.dropout, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        if mod._qkv_same_embed_dim:
            ws = [mod.in_proj_weight[i * e:(i + 1) * e] for i in range(3)]
        else:
            ws = [mod.q_proj_weight, mod.k_proj_weight, mod.v_proj_weight]
        for i, (proj, wi) in enumerate(zip((new.q_proj, new.k_proj, new.v_proj), ws,
                                           strict=True)):
            proj.weight.copy_(wi[rows])
            if mod.in_proj_bias is not None:
                proj.bias.copy_(mod.in_proj_bias[i * e:(i + 1) * e][rows])
        new.out_proj.weight.copy_(w[:, rows])
        if mod.out_proj.bias is not None:
            new.out_proj.bias.copy_(mod.out_proj.bias)
    new.train(mod.training)
    return new
