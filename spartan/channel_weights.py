"""The weights of channel items: the rows and columns an item owns, its value, and scaling,
zeroing and masking them (for spartan.channel_sparsifier and spartan.shrink)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from spartan.attention_layout import projection, projection_path, qkv
from spartan.channel_graph import kv_groups
from spartan.channels import ChannelGraph, Layer


class ScaleItems(torch.autograd.Function):
    """x scaled along `dim` by soft x hard; backward: dx = g soft, d soft = sum(g x)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, soft: Tensor, hard: Tensor,  # type: ignore[override]
                dim: int) -> Tensor:
        view = [1] * x.dim()
        view[dim] = -1
        ctx.view, ctx.dim = view, dim
        ctx.save_for_backward(x, soft)
        return x * (soft * hard).view(view).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, soft = ctx.saved_tensors
        gx = g * soft.view(ctx.view).to(g.dtype)
        gs = None
        if ctx.needs_input_grad[1]:
            dims = [d for d in range(x.dim()) if d != ctx.dim % x.dim()]
            gs = (g * x).sum(dims).to(soft.dtype)
        return gx, gs, None, None


def item_values(graph: ChannelGraph, device: torch.device) -> Tensor:
    """L1 norm of each item's weights (spartan.channel_sparsifier, module doc), differentiable
    in the weights."""
    g, n = graph, graph.n_items
    acc = torch.zeros(n + 1, device=device, dtype=torch.float32)
    for lay in g.layers.values():
        out_idx = torch.where(lay.out_items >= 0, lay.out_items, n)
        in_idx = torch.where(lay.in_items >= 0, lay.in_items, n)
        rows, cols = row_col(lay, torch.abs)
        acc = acc.index_add(0, out_idx, rows.float())
        if cols is not None:
            acc = acc.index_add(0, in_idx, cols.float())
    for norm in g.norms.values():
        mod = norm.module
        if getattr(mod, "affine", False):
            sq = mod.weight.abs() + mod.bias.abs()  # type: ignore[operator]
            idx = torch.where(norm.items >= 0, norm.items, n)
            acc = acc.index_add(0, idx, sq.float())
    return acc[:n]


def out_proj_weight(mod: Any) -> Tensor:
    out = mod.out_proj if isinstance(mod, nn.MultiheadAttention) else projection(mod, "o")
    if parametrize.is_parametrized(out, "weight"):
        return out.parametrizations.weight.original  # type: ignore[union-attr, return-value]
    return out.weight  # type: ignore[return-value]


def _qkv(mod: nn.Module) -> list[tuple[Tensor, Tensor | None]]:
    """(weight, bias) of the q, k and v projections, rows by head."""
    if isinstance(mod, nn.MultiheadAttention):
        d = mod.embed_dim
        b = mod.in_proj_bias
        if mod._qkv_same_embed_dim:
            w = mod.in_proj_weight
            return [(w[i * d:(i + 1) * d], None if b is None else b[i * d:(i + 1) * d])
                    for i in range(3)]
        ws = [mod.q_proj_weight, mod.k_proj_weight, mod.v_proj_weight]
        return [(w, None if b is None else b[i * d:(i + 1) * d]) for i, w in enumerate(ws)]
    return qkv(mod)


def row_col_sq(lay: Layer) -> tuple[Tensor, Tensor | None]:
    """Per output channel (head) and per input channel: sums of squared weights."""
    return row_col(lay, torch.square)


def out_in(mod: nn.Module) -> Tensor:
    """The weight as (out, in / groups, ...): a transposed conv's (in, out, ...) weight as a
    view (writes reach the weight)."""
    w = mod.weight
    assert isinstance(w, Tensor)
    return w.transpose(0, 1) if isinstance(mod, (nn.ConvTranspose1d, nn.ConvTranspose2d)) \
        else w


def row_col(lay: Layer, f: Any) -> tuple[Tensor, Tensor | None]:
    """Per output channel (head) and per input channel: sums of f(weight) (f = abs: L1)."""
    mod = lay.module
    if lay.kind == "attention":
        h, rep = lay.out_items.numel(), kv_groups(mod)
        rows = f(out_proj_weight(mod)).sum(0).view(h, -1).sum(1)
        for i, (w, b) in enumerate(_qkv(mod)):
            per = f(w).sum(1) if b is None else f(w).sum(1) + f(b)
            if i == 0:
                rows = rows + per.view(h, -1).sum(1)
            else:  # a k / v head shared by `rep` q heads: a share to each (the item sums them)
                rows = rows + per.view(h // rep, -1).sum(1).repeat_interleave(rep) / rep
        return rows, None
    w = out_in(mod)
    bias = getattr(mod, "bias", None)
    fw = f(w)
    if lay.kind == "linear":
        rows, cols = fw.sum(1), fw.sum(0)
    else:
        w2 = fw.sum(tuple(range(2, fw.dim())))  # (out, in / groups): over the kernel
        rows = w2.sum(1)
        g = mod.groups
        cout, per = w2.shape
        cols = w2.view(g, cout // g, per).sum(1).reshape(-1)  # input channel gi * per + j
    if bias is not None:
        rows = rows + f(bias)
    return rows, cols


def scale_columns(lay: Layer, scale: Tensor) -> None:
    """Multiply the weight entries reading each input channel by scale[channel]."""
    mod = lay.module
    w = out_in(mod)
    if lay.kind == "linear":
        w.mul_(scale.view(1, -1).to(w.dtype))
        return
    g = mod.groups
    cout, per = w.shape[:2]
    # input channel gi * per + j is read by rows gi * cout/g ... at column j
    s = scale.view(g, 1, per).expand(g, cout // g, per).reshape(cout, per)
    w.mul_(s.view(cout, per, *([1] * (w.dim() - 2))).to(w.dtype))


def zero_items(lay: Layer, drop: Tensor, n: int) -> None:
    mod = lay.module
    d_out = drop[torch.where(lay.out_items >= 0, lay.out_items, n)]
    if lay.kind == "attention":
        rows = d_out.repeat_interleave(lay.head_dim)
        rep = kv_groups(mod)
        kv_rows = d_out.view(-1, rep)[:, 0].repeat_interleave(lay.head_dim)
        for i, (w, b) in enumerate(_qkv(mod)):
            r = rows if i == 0 else kv_rows
            w[r] = 0.0
            if b is not None:
                b[r] = 0.0
        out_proj_weight(mod)[:, rows] = 0.0
        return
    out_in(mod)[d_out] = 0.0
    if getattr(mod, "bias", None) is not None:
        mod.bias[d_out] = 0.0
    d_in = drop[torch.where(lay.in_items >= 0, lay.in_items, n)]
    if bool(d_in.any()):
        scale_columns(lay, (~d_in).to(mod.weight.dtype))


def weight_masks(lay: Layer, keep: Tensor, n: int) -> dict[str, Tensor]:
    mod = lay.module
    k_out = keep[torch.where(lay.out_items >= 0, lay.out_items, n)]
    if lay.kind == "attention":
        rows = k_out.repeat_interleave(lay.head_dim)
        pre = lay.name + "." if lay.name else ""
        out_name = pre + ("out_proj" if isinstance(mod, nn.MultiheadAttention)
                          else projection_path(mod, "o")) + ".weight"
        out_w = out_proj_weight(mod)
        masks = {out_name: rows.view(1, -1).expand(out_w.shape).clone()}
        if isinstance(mod, nn.MultiheadAttention) and mod._qkv_same_embed_dim:
            masks[pre + "in_proj_weight"] = rows.repeat(3).view(-1, 1).expand(
                mod.in_proj_weight.shape).clone()
        return masks
    w = out_in(mod)
    m = k_out.view(-1, *([1] * (w.dim() - 1))).expand(w.shape).clone()
    k_in = keep[torch.where(lay.in_items >= 0, lay.in_items, n)]
    if lay.kind == "linear":
        m &= k_in.view(1, -1)
    else:
        g = mod.groups
        cout, per = w.shape[:2]
        s = k_in.view(g, 1, per).expand(g, cout // g, per).reshape(cout, per)
        m &= s.view(cout, per, *([1] * (w.dim() - 2)))
    if w is not mod.weight:  # transposed conv: back to its (in, out, ...) layout
        m = m.transpose(0, 1).contiguous()
    return {(lay.name + "." if lay.name else "") + "weight": m}
