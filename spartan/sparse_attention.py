"""nn.MultiheadAttention with its projections on sparse kernels (inference only).

Same computation as torch's multi_head_attention_forward without dropout, bias_k / bias_v or
add_zero_attn (those attentions stay dense): project q, k, v, split heads, scaled dot-product
attention, merge heads, output projection.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spartan.kernels import SparseLinear


def attention_ok(mha: nn.MultiheadAttention) -> bool:
    """The attentions this module reproduces."""
    return mha.bias_k is None and not mha.add_zero_attn


def projection_weights(mha: nn.MultiheadAttention) -> dict[str, Tensor]:
    """Maskable projection weights by their parameter names on the attention."""
    if mha._qkv_same_embed_dim:
        out = {"in_proj_weight": mha.in_proj_weight}
    else:
        out = {f"{x}_proj_weight": getattr(mha, f"{x}_proj_weight") for x in "qkv"}
    return {**out, "out_proj.weight": mha.out_proj.weight}


class SparseMultiheadAttention(nn.Module):
    """Built from an nn.MultiheadAttention and a kernel (and block) per projection weight."""

    def __init__(self, mha: nn.MultiheadAttention, weights: dict[str, Tensor],
                 kernels: dict[str, str], blocks: dict[str, tuple[int, int]]) -> None:
        super().__init__()
        if not attention_ok(mha):
            raise ValueError("attention with bias_k / bias_v or add_zero_attn stays dense")
        self.embed_dim, self.num_heads = mha.embed_dim, mha.num_heads
        self.batch_first, self.same = mha.batch_first, mha._qkv_same_embed_dim
        e = mha.embed_dim
        bias = mha.in_proj_bias

        def lin(name: str, b: Tensor | None, bname: str) -> SparseLinear:
            return SparseLinear(weights[name], b, kernels.get(name, "dense"),
                                blocks.get(name, (1, 1)), (name, bname))

        if self.same:
            self.in_proj = lin("in_proj_weight", bias, "in_proj_bias")
        else:
            # Separate q / k / v weights share in_proj_bias; kept apart as three bias slices.
            self.q_proj, self.k_proj, self.v_proj = (
                lin(f"{x}_proj_weight", None if bias is None else bias[i * e:(i + 1) * e],
                    f"{x}_proj_bias") for i, x in enumerate("qkv"))
        self.out_proj = lin("out_proj.weight", mha.out_proj.bias, "out_proj.bias")

    def weights(self) -> dict[str, Tensor]:
        """Weights and biases under the dense attention's parameter names."""
        out: dict[str, Tensor] = {}
        if self.same:
            out.update(self.in_proj.weights())
        else:
            parts = [p.weights() for p in (self.q_proj, self.k_proj, self.v_proj)]
            for x, w in zip("qkv", parts, strict=True):
                out[f"{x}_proj_weight"] = w[f"{x}_proj_weight"]
            if all(f"{x}_proj_bias" in w for x, w in zip("qkv", parts, strict=True)):
                out["in_proj_bias"] = torch.cat([w[f"{x}_proj_bias"]
                                                 for x, w in zip("qkv", parts, strict=True)])
        out.update(self.out_proj.weights())
        return out

    def forward(self, query: Tensor, key: Tensor, value: Tensor,
                key_padding_mask: Tensor | None = None, need_weights: bool = True,
                attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        batched = query.dim() == 3
        if not batched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            key_padding_mask = None if key_padding_mask is None else key_padding_mask[None]
        elif not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        if self.same and query is key and key is value:
            q, k, v = self.in_proj(query).chunk(3, dim=-1)
        elif self.same:
            w = self.in_proj
            q, k, v = (t for t in (w(query), w(key), w(value)))
            e = self.embed_dim
            q, k, v = q[..., :e], k[..., e:2 * e], v[..., 2 * e:]
        else:
            q, k, v = self.q_proj(query), self.k_proj(key), self.v_proj(value)
        n, lq, e = q.shape
        h, d = self.num_heads, e // self.num_heads
        q, k, v = (t.reshape(n, -1, h, d).transpose(1, 2) for t in (q, k, v))  # (N, H, L, d)
        mask = _merge_masks(attn_mask, key_padding_mask, q, k.shape[2], is_causal)
        if need_weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(d)
            if mask is not None:
                scores = scores + mask
            attn = scores.softmax(-1)
            y = attn @ v
            weights: Tensor | None = attn.mean(1) if average_attn_weights else attn
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            weights = None
        y = self.out_proj(y.transpose(1, 2).reshape(n, lq, e))
        if not batched:
            return y[0], None if weights is None else weights[0]
        return (y if self.batch_first else y.transpose(0, 1)), weights


def _merge_masks(attn_mask: Tensor | None, key_padding_mask: Tensor | None, q: Tensor,
                 lk: int, is_causal: bool) -> Tensor | None:
    """One additive float mask broadcastable to (N, H, Lq, Lk), or None."""
    n, h, lq, _ = q.shape
    if is_causal and attn_mask is None:
        attn_mask = torch.ones(lq, lk, dtype=torch.bool, device=q.device).triu(1)
    out: Tensor | None = None
    if attn_mask is not None:
        out = _additive(attn_mask, q.dtype)
        if out.dim() == 3:  # (N * H, Lq, Lk)
            out = out.reshape(n, h, lq, lk)
    if key_padding_mask is not None:
        kp = _additive(key_padding_mask, q.dtype).reshape(n, 1, 1, lk)
        out = kp if out is None else out + kp
    return out


def _additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(
            mask, float("-inf"))
    return mask.to(dtype)
