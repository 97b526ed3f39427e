"""What tracing finds (spartan.channels): the items of a model, the layers and norms they live
in, and how channels joined by tracing become items (a union-find over channel elements;
pinned sets are never items) and layer groups (items living in exactly the same layers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from spartan.attention_layout import embed_in, head_size, projection, qkv, qkv_out


# -- attention modules --------------------------------------------------------------------
def attention_heads(module: nn.Module) -> tuple[int, int] | None:
    """(heads, head_dim) of an attention module whose heads can be items, else None."""
    if isinstance(module, nn.MultiheadAttention):
        if module.bias_k is not None or module.add_zero_attn:
            return None
        if module.kdim != module.embed_dim or module.vdim != module.embed_dim:
            return None
        return module.num_heads, module.head_dim
    head_dim = head_size(module)  # None unless a layout of spartan.attention_layout
    if head_dim is None:
        return None
    q, k, v = qkv_out(module)
    out_in = projection(module, "o").in_features
    if k != v or q % head_dim or k % head_dim or out_in != q:
        return None
    if (q // head_dim) % (k // head_dim):
        return None
    return q // head_dim, head_dim


def kv_groups(module: nn.Module) -> int:
    """Query heads per key / value head: 1, or more with grouped-query attention (q head h
    reads k / v head h // groups, as Hugging Face's repeat_kv lays them out)."""
    if isinstance(module, nn.MultiheadAttention):
        return 1
    q, k, _ = qkv_out(module)
    return q // k


def head_items(uf: UnionFind, module: nn.Module, heads: int) -> list[int]:
    """One element per query head; the heads sharing a key / value head are joined (they go
    together: removing a k / v head removes its group)."""
    elems, rep = uf.new(heads), kv_groups(module)
    for h in range(heads):
        uf.union(elems[h], elems[h - h % rep])
    return elems


# -- the result ---------------------------------------------------------------------------
@dataclass
class Layer:
    """A Linear, Conv1d / Conv2d (transposed too) or attention module with at least one
    side whose channels can go.

    in_items / out_items: the item of each input / output channel, -1 where pinned; for
    attention, out_items has one entry per head and in_items is all -1.
    """

    name: str
    module: Any  # an nn.Module (Any: its attributes depend on the kind)
    kind: str  # "linear", "conv" or "attention"
    in_items: Tensor
    out_items: Tensor
    depthwise: bool = False  # a conv with one input channel per group: groups follow kept_in
    head_dim: int = 1
    positions: float = 1.0  # output positions per example (tokens, Ho x Wo): FLOPs costs

    @property
    def weight(self) -> Tensor:
        return layer_weight(self.module)


@dataclass
class Norm:
    name: str
    module: Any  # a BatchNorm
    items: Tensor


@dataclass
class ChannelGraph:
    """Items (coupled channels / heads) of a model and where each one lives."""

    n_items: int
    layers: dict[str, Layer]
    norms: dict[str, Norm]
    item_group: Tensor  # layer group of each item (items living in the same layers)
    groups: list[Tensor] = field(default_factory=list)  # item indices of each layer group
    fallbacks: list[str] = field(default_factory=list)  # modules traced piecewise, and why

    def item_layers(self) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for lay in self.layers.values():
            for t in (lay.in_items, lay.out_items):
                for i in torch.unique(t[t >= 0]).tolist():
                    out.setdefault(int(i), []).append(lay.name)
        return out


def layer_weight(module: nn.Module) -> Tensor:
    """The weight tensor a layer computes with (the original of a parametrized one)."""
    if isinstance(module, nn.MultiheadAttention):
        w = module.in_proj_weight if module._qkv_same_embed_dim else module.q_proj_weight
        return w
    if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d,
                           nn.ConvTranspose2d)):
        return module.weight
    return qkv(module)[0][0]


# -- union-find over channels -------------------------------------------------------------
class UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []
        self.pinned: set[int] = set()

    def new(self, n: int) -> list[int]:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return list(range(start, start + n))

    def find(self, a: int) -> int:
        root = a
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[a] != root:
            self.parent[a], a = root, self.parent[a]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)  # the earliest element stays the root

    def union_all(self, a: list[int], b: list[int]) -> None:
        for x, y in zip(a, b, strict=True):
            self.union(x, y)

    def pin(self, elems: list[int]) -> None:
        self.pinned.update(elems)


@dataclass
class Found:
    """Layers and norms seen by tracing, by name, with their channel elements."""

    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    norms: dict[str, list[int]] = field(default_factory=dict)
    fallbacks: list[str] = field(default_factory=list)



def resolve(model: nn.Module, uf: UnionFind, found: Found) -> ChannelGraph:
    pinned_roots = {uf.find(e) for e in uf.pinned}
    item_of_root: dict[int, int] = {}

    def items(elems: list[int] | None, n: int) -> Tensor:
        if elems is None:
            return torch.full((n,), -1, dtype=torch.long)
        out = []
        for e in elems:
            r = uf.find(e)
            if r in pinned_roots:
                out.append(-1)
            else:
                out.append(item_of_root.setdefault(r, len(item_of_root)))
        return torch.tensor(out, dtype=torch.long)

    layers: dict[str, Layer] = {}
    for name, d in found.layers.items():
        mod: Any = model.get_submodule(name)
        if d["kind"] == "attention":
            n_in = mod.embed_dim if isinstance(mod, nn.MultiheadAttention) else \
                embed_in(mod)
        else:
            n_in = mod.in_features if isinstance(mod, nn.Linear) else \
                mod.in_channels  # type: ignore[union-attr]
        in_items, out_items = items(d["in"], int(n_in)), items(d["out"], len(d["out"]))
        if bool((in_items >= 0).any()) or bool((out_items >= 0).any()):
            layers[name] = Layer(name, mod, d["kind"], in_items, out_items,
                                 depthwise=bool(d.get("depthwise", False)),
                                 head_dim=int(d.get("head_dim", 1)),
                                 positions=float(d["positions"]))
    norms = {}
    for name, elems in found.norms.items():
        t = items(elems, len(elems))
        if bool((t >= 0).any()):
            norms[name] = Norm(name, model.get_submodule(name), t)
    n = len(item_of_root)
    # Layer groups: items that live in exactly the same layers (a layer's channels, a
    # residual stream's channels, one attention's heads) share a floor and a uniform budget.
    where: dict[int, list[tuple[str, str]]] = {i: [] for i in range(n)}
    for lay in layers.values():
        for side, t in (("in", lay.in_items), ("out", lay.out_items)):
            for i in torch.unique(t[t >= 0]).tolist():
                where[int(i)].append((lay.name, side))
    keys: dict[tuple[tuple[str, str], ...], int] = {}
    item_group = torch.tensor([keys.setdefault(tuple(where[i]), len(keys)) for i in range(n)],
                              dtype=torch.long)
    groups = [torch.nonzero(item_group == g).squeeze(1) for g in range(len(keys))]
    return ChannelGraph(n, layers, norms, item_group, groups, found.fallbacks)
