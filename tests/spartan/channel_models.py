"""Tiny models for the structured-sparsity tests: every coupling the tracer knows."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class GroupedNet(nn.Module):
    """Depthwise (multiplier 1 and 2) and grouped convs, BatchNorm after and before ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.dw2 = nn.Conv2d(8, 16, 3, padding=1, groups=8)  # multiplier 2
        self.grouped = nn.Conv2d(16, 12, 1, groups=4)
        self.bn2 = nn.BatchNorm2d(12)
        self.head = nn.Linear(12, 5)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn0(self.stem(x)))
        x = self.bn1(F.relu(self.dw(x)))  # BN after the activation: still exact
        x = F.relu(self.dw2(x))
        x = F.relu(self.bn2(self.grouped(x)))
        return self.head(x.mean(dim=(2, 3)))


class ConcatNet(nn.Module):
    """Two branches concatenated, a squeeze-excite product, a residual sum."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 1)
        self.mix = nn.Conv2d(10, 10, 3, padding=1)
        self.se = nn.Linear(10, 10)
        self.head = nn.Linear(10, 4)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.cat([F.relu(self.a(x)), torch.sigmoid(self.b(x))], dim=1)
        z = F.relu(self.mix(y))
        gate = torch.sigmoid(self.se(z.mean((2, 3))))
        z = z * gate[:, :, None, None] + y
        return self.head(torch.flatten(F.adaptive_avg_pool2d(z, 1), 1))


class HFAttention(nn.Module):
    """Attention laid out as in Hugging Face models: separate q / k / v / o projections;
    kv_heads < heads: grouped-query attention (k / v heads repeated as HF's repeat_kv)."""

    def __init__(self, dim: int, heads: int, kv_heads: int | None = None) -> None:
        super().__init__()
        self.head_dim = dim // heads
        self.num_heads = heads
        self.num_key_value_heads = kv_heads or heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, self.num_key_value_heads * self.head_dim)
        self.v_proj = nn.Linear(dim, self.num_key_value_heads * self.head_dim)
        self.o_proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        shape = (b, t, -1, self.head_dim)
        q, k, v = (p(x).view(shape).transpose(1, 2) for p in (self.q_proj, self.k_proj,
                                                               self.v_proj))
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class TinyDecoder(nn.Module):
    """A pre-norm block with HF-style attention and a gated (SwiGLU) MLP."""

    def __init__(self, dim: int = 16, heads: int = 4, hidden: int = 24,
                 kv_heads: int | None = None) -> None:
        super().__init__()
        self.embed = nn.Linear(6, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = HFAttention(dim, heads, kv_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)
        self.head = nn.Linear(dim, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x)
        h = h + self.attn(self.norm1(h))
        y = self.norm2(h)
        h = h + self.down_proj(F.silu(self.gate_proj(y)) * self.up_proj(y))
        return self.head(h.mean(1))


class Untraceable(nn.Module):
    """Data-dependent control flow at the top: the tracer falls back to the children."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8))
        self.head = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        if x.sum() > 1e9:
            x = x * 0
        return self.head(self.body(x))
