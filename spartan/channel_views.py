"""How layout ops move a traced tensor's channel dimension (flatten, reshape, permute,
transpose, reductions, indexing): each rule returns the new Track or raises Pin (the channels
are pinned; spartan.channels)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import fx

Shape = tuple[int, ...]
MAX_MERGED = 1 << 22  # elements of a merged dim tracked one by one (beyond: pinned)


@dataclass
class Track:
    """The channels of one traced tensor: one element per index of dimension `dim`."""

    elems: list[int]
    dim: int



class Pin(Exception):
    """Raised by a rule: the node's traced inputs are pinned, its output is not traced."""


def meta(a: Any) -> Any:
    """The recorded shape of a node's value (None for non-nodes and non-tensors)."""
    return a.meta.get("spartan_shape") if isinstance(a, fx.Node) else None


def arg(node: fx.Node, pos: int, name: str, default: Any) -> Any:
    if len(node.args) > pos:
        return node.args[pos]
    return node.kwargs.get(name, default)


def flatten(x: Track | None, node: fx.Node, start: int, end: int) -> Track | None:
    if x is None:
        return None
    in_shape = meta(node.args[0])
    nd = len(in_shape)
    s, e = start % nd, end % nd
    if x.dim < s:
        return x
    if x.dim > e:
        return Track(x.elems, x.dim - (e - s))
    return Track(merged(x, in_shape, s, e), s)


def reshape(x: Track | None, node: fx.Node, shape: Any) -> Track | None:
    if x is None:
        return None
    in_shape = meta(node.args[0])
    for a in range(x.dim, -1, -1):  # the output dim covering input dims a..b around x.dim
        for k in range(len(shape)):
            if math.prod(shape[:k]) != math.prod(in_shape[:a]):
                continue
            for b in range(x.dim, len(in_shape)):
                if shape[k] == math.prod(in_shape[a:b + 1]):
                    return Track(merged(x, in_shape, a, b), k)
    raise Pin


def merged(x: Track, in_shape: Shape, s: int, e: int) -> list[int]:
    """The elements of input dims s..e (x.dim among them) merged into one dim, row-major: each
    channel repeated over the positions it spans (a Linear after a flatten reads channel c of
    a (C, H, W) map at features c H W ... (c + 1) H W - 1, so those columns are its item's)."""
    outer, inner = math.prod(in_shape[s:x.dim]), math.prod(in_shape[x.dim + 1:e + 1])
    if outer * inner * len(x.elems) > MAX_MERGED:
        raise Pin
    return [el for _ in range(outer) for el in x.elems for _ in range(inner)]

def permute(x: Track | None, node: fx.Node, name: str, shape: Any) -> Track | None:
    if x is None:
        return None
    nd = len(shape)
    rest = [a for a in node.args[1:]] + list(node.kwargs.values())
    if name == "permute":
        order = rest[0] if len(rest) == 1 and isinstance(rest[0], (list, tuple)) else rest
        order = [int(o) % nd for o in order]  # type: ignore[arg-type, union-attr]
        return Track(x.elems, order.index(x.dim))
    a, b = (int(rest[0]) % nd, int(rest[1]) % nd)  # type: ignore[arg-type]
    return Track(x.elems, b if x.dim == a else a if x.dim == b else x.dim)


def reduce(x: Track | None, node: fx.Node, shape: Any) -> Track | None:
    if x is None:
        return None
    in_shape = meta(node.args[0])
    nd = len(in_shape)
    dims = arg(node, 1, "dim", None)
    keep = bool(arg(node, 2, "keepdim", False))
    if dims is None:
        raise Pin
    dims = [dims] if isinstance(dims, int) else list(dims)
    dims = [int(d) % nd for d in dims]
    if x.dim in dims:
        raise Pin
    return Track(x.elems, x.dim if keep else x.dim - sum(d < x.dim for d in dims))


def index(x: Track | None, node: fx.Node, shape: Any) -> Track | None:
    if x is None:
        return None
    idx = node.args[1]
    idx = idx if isinstance(idx, tuple) else (idx,)
    in_i, out_i, pos = 0, 0, None  # input dim read, output dims made, channel's place
    for entry in idx:
        if entry is None:  # a new dim of size 1
            out_i += 1
        elif isinstance(entry, int):
            if in_i == x.dim:
                raise Pin
            in_i += 1
        elif isinstance(entry, slice):
            if in_i == x.dim:
                if entry != slice(None):
                    raise Pin
                pos = out_i
            in_i, out_i = in_i + 1, out_i + 1
        else:
            raise Pin
    return Track(x.elems, pos if pos is not None else out_i + x.dim - in_i)


