"""The per-op rules of channel tracing (spartan.channels, module doc): one pass over a traced
fx graph joining channels that must stay equal in number and pinning those that must stay."""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from spartan.channel_graph import Found, UnionFind, attention_heads, kv_groups
from spartan.channel_views import (
    Pin,
    Track,
    arg,
    flatten,
    index,
    meta,
    permute,
    reduce,
    reshape,
)

Shape = tuple[int, ...]

_UNARY_FUNCS = {torch.relu, torch.sigmoid, torch.tanh, torch.exp, torch.abs, torch.neg,
                torch.square, torch.sqrt, torch.rsqrt, F.relu, F.gelu, F.silu, F.sigmoid,
                F.tanh, F.dropout, F.leaky_relu, F.hardswish, F.relu6, F.elu, F.softplus,
                F.mish, F.hardtanh, torch.clamp, F.dropout2d}
_UNARY_METHODS = {"relu", "sigmoid", "tanh", "exp", "abs", "neg", "clamp", "clamp_min",
                  "contiguous", "clone", "float", "half", "bfloat16", "to", "type_as",
                  "detach", "relu_", "sqrt", "rsqrt", "square"}
_BINARY_FUNCS = {operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd,
                 operator.imul, operator.pow, torch.add, torch.sub, torch.mul, torch.div,
                 torch.pow}
_BINARY_METHODS = {"add", "sub", "mul", "div", "add_", "mul_", "pow", "sub_"}
_REDUCE = {"mean", "sum", "amax", "amin"}
_META_METHODS = {"size", "dim", "numel", "type", "get_device"}
CONVS = (nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d, nn.ConvTranspose2d)
TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d)
POOLS = (nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d, nn.MaxPool2d,
         nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
POOL_FUNCS = (F.max_pool1d, F.avg_pool1d, F.adaptive_avg_pool1d, F.adaptive_max_pool1d,
              F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d)
_PASS_MODULES = (nn.ReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Dropout, nn.Dropout2d,
                 nn.Identity, nn.LeakyReLU, nn.Hardswish, nn.ReLU6, nn.ELU, nn.Mish,
                 nn.Softplus, nn.Hardtanh) + POOLS



class Analysis:
    """One pass over a traced graph, joining and pinning channels (rules in the module doc)."""

    def __init__(self, uf: UnionFind, found: Found, root: nn.Module, prefix: str,
                 inputs: list[Track | None] | None = None,
                 link_output: Callable[[Track], bool] | None = None) -> None:
        self.uf, self.found, self.root, self.prefix = uf, found, root, prefix
        self.tracks: dict[fx.Node, Any] = {}
        # the placeholders' channels where a sibling's output comes in (spartan.channel_run),
        # and whether the output's channels go on to a sibling instead of being pinned
        self.inputs, self.link_output = list(inputs or []), link_output
        self._placeholders = 0

    def run(self, graph: fx.Graph) -> None:
        for node in graph.nodes:
            try:
                self.tracks[node] = self._node(node)
            except Pin:
                self._pin_args(node)
                self.tracks[node] = None

    # helpers
    def _track(self, a: Any) -> Track | None:
        t = self.tracks.get(a) if isinstance(a, fx.Node) else None
        return t if isinstance(t, Track) else None

    def _pin_args(self, node: fx.Node) -> None:
        for a in _flat_nodes((node.args, node.kwargs)):
            t = self.tracks.get(a)
            for tr in _flat_tracks(t):
                self.uf.pin(tr.elems)

    def _node(self, node: fx.Node) -> Any:
        op = node.op
        if op == "placeholder":
            i, self._placeholders = self._placeholders, self._placeholders + 1
            return self.inputs[i] if i < len(self.inputs) else None
        if op == "get_attr":
            return None
        if op == "output":
            out = self._track(node.args[0]) if node.args else None
            if out is not None and self.link_output is not None and self.link_output(out):
                return None
            raise Pin
        shape = node.meta.get("spartan_shape")
        if op == "call_module":
            return self._module(node, shape)
        if op == "call_method":
            return self._method(node, str(node.target), shape)
        return self._function(node, node.target, shape)

    # modules
    def _module(self, node: fx.Node, shape: Any) -> Any:
        name = self.prefix + str(node.target)
        mod = self.root.get_submodule(str(node.target))
        x = self._track(node.args[0]) if node.args else None
        if isinstance(mod, nn.Linear):
            return self._linear(name, mod, node, x, shape)
        if isinstance(mod, CONVS):
            if isinstance(mod, TRANSPOSED) and mod.groups != 1:
                raise Pin  # its weight is (in, out / groups, ...): followed with one group
            return self._conv(name, mod, node, x, shape)
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if x is None or x.dim != 1 or len(x.elems) != mod.num_features:
                raise Pin
            seen = self.found.norms.get(name)
            if seen is not None:
                self.uf.union_all(seen, x.elems)
            else:
                self.found.norms[name] = x.elems
            return x
        if isinstance(mod, _PASS_MODULES):
            if x is None:
                return None
            if isinstance(mod, POOLS) and x.dim != 1:
                raise Pin
            return x
        if isinstance(mod, nn.Flatten):
            return flatten(x, node, mod.start_dim, mod.end_dim)
        heads = attention_heads(mod)
        if heads is not None:
            self._pin_args(node)
            first = name not in self.found.layers
            elems = self._layer_once(name, "attention", None, heads[0], shape=None)
            if first:  # grouped-query attention: the q heads of one k / v head go together
                rep = kv_groups(mod)
                for h in range(heads[0]):
                    self.uf.union(elems[h], elems[h - h % rep])
            self.found.layers[name]["head_dim"] = heads[1]
            tokens = _first_shape(meta(node.args[0])) if node.args else None
            batch_first = getattr(mod, "batch_first", True)
            if tokens is not None and len(tokens) == 3:
                self.found.layers[name]["positions"] = float(
                    tokens[1] if batch_first else tokens[0])
            del elems
            return None
        raise Pin

    def _layer_once(self, name: str, kind: str, in_elems: list[int] | None, n_out: int,
                    shape: Shape | None, **extra: Any) -> list[int]:
        """The output elements of a layer; a layer called again joins its inputs and outputs."""
        seen = self.found.layers.get(name)
        if seen is not None:
            if in_elems is not None and seen["in"] is not None:
                self.uf.union_all(seen["in"], in_elems)
            elif in_elems is not None or seen["in"] is not None:
                self.uf.pin(in_elems or seen["in"])
            return list(seen["out"])
        out = self.uf.new(n_out)
        self.found.layers[name] = {"kind": kind, "in": in_elems, "out": out,
                                   "positions": _positions(shape, kind), **extra}
        return out

    def _linear(self, name: str, mod: nn.Linear, node: fx.Node, x: Track | None,
                shape: Any) -> Track:
        in_shape = meta(node.args[0])
        ndim = len(in_shape) if isinstance(in_shape, tuple) else 0
        in_elems = None
        if x is not None:
            if x.dim == ndim - 1 and len(x.elems) == mod.in_features:
                in_elems = x.elems
            else:
                self.uf.pin(x.elems)
        out = self._layer_once(name, "linear", in_elems, mod.out_features, shape)
        return Track(out, len(shape) - 1)

    def _conv(self, name: str, mod: Any, node: fx.Node, x: Track | None,
              shape: Any) -> Track:
        cin, cout, g = mod.in_channels, mod.out_channels, mod.groups
        in_elems = None
        if x is not None:
            if x.dim == 1 and len(x.elems) == cin:
                in_elems = x.elems
            else:
                self.uf.pin(x.elems)
        first = name not in self.found.layers
        # FLOPs positions: a transposed conv multiplies every weight at each input position.
        at = meta(node.args[0]) if isinstance(mod, TRANSPOSED) and node.args else shape
        out = self._layer_once(name, "conv", in_elems, cout, at, depthwise=g > 1 and g == cin)
        if first and g > 1:
            if in_elems is None:  # grouped input we cannot follow: the groups stay whole
                self.uf.pin(out)
            elif g == cin:  # depthwise: output j computes from input j // multiplier
                k = cout // cin
                for j, e in enumerate(out):
                    self.uf.union(e, in_elems[j // k])
            else:  # every group keeps the same channels: join channel j across groups
                a, b = cin // g, cout // g
                for c in range(cin):
                    self.uf.union(in_elems[c], in_elems[c % a])
                for j in range(cout):
                    self.uf.union(out[j], out[j % b])
        return Track(out, 1)

    # methods and functions
    def _method(self, node: fx.Node, name: str, shape: Any) -> Any:
        x = self._track(node.args[0]) if node.args else None
        if name in _META_METHODS:
            return None
        if x is None and not any(self._track(a) for a in _flat_nodes(node.args[1:])):
            return None
        if name in _UNARY_METHODS:
            if any(self._track(a) for a in _flat_nodes(node.args[1:])):
                raise Pin
            return x
        if name in _BINARY_METHODS:
            return self._binary(node, shape)
        if name in ("view", "reshape"):
            return reshape(x, node, shape)
        if name == "flatten":
            return flatten(x, node, arg(node, 1, "start_dim", 0),
                                 arg(node, 2, "end_dim", -1))
        if name in ("permute", "transpose"):
            return permute(x, node, name, shape)
        if name in _REDUCE:
            return reduce(x, node, shape)
        raise Pin

    def _function(self, node: fx.Node, fn: Any, shape: Any) -> Any:
        tracked = [self._track(a) for a in _flat_nodes((node.args, node.kwargs))]
        if fn is getattr or fn is operator.getitem and self._tuple_index(node):
            return self._getitem_tuple(node) if fn is operator.getitem else None
        if not any(tracked):
            return None
        x = self._track(node.args[0]) if node.args else None
        if fn in _UNARY_FUNCS:
            if any(self._track(a) for a in _flat_nodes((node.args[1:], node.kwargs))):
                raise Pin
            return x
        if fn in _BINARY_FUNCS:
            return self._binary(node, shape)
        if fn is torch.cat:
            return self._cat(node, shape)
        if fn is torch.flatten:
            return flatten(x, node, arg(node, 1, "start_dim", 0),
                                 arg(node, 2, "end_dim", -1))
        if fn is torch.reshape:
            return reshape(x, node, shape)
        if fn in (torch.permute, torch.transpose):
            return permute(x, node, fn.__name__, shape)
        if fn in (torch.mean, torch.sum, torch.amax, torch.amin):
            return reduce(x, node, shape)
        if fn in POOL_FUNCS:
            if x is None or x.dim != 1 or len(tracked) > 1:
                raise Pin
            return x
        if fn is operator.getitem:
            return index(x, node, shape)
        raise Pin

    def _tuple_index(self, node: fx.Node) -> bool:
        src = node.args[0]
        return isinstance(src, fx.Node) and isinstance(src.meta.get("spartan_shape"), tuple) \
            and bool(src.meta["spartan_shape"]) \
            and isinstance(src.meta["spartan_shape"][0], (tuple, type(None)))

    def _getitem_tuple(self, node: fx.Node) -> Any:
        t = self.tracks.get(node.args[0])  # type: ignore[arg-type]
        if isinstance(t, tuple) and isinstance(node.args[1], int):
            return t[node.args[1]]
        return None

    def _binary(self, node: fx.Node, shape: Any) -> Track | None:
        if not isinstance(shape, tuple):
            raise Pin
        nd = len(shape)
        operands = list(node.args[:2]) + [v for k, v in node.kwargs.items() if k == "other"]
        dims, tracks, plain = set(), [], []
        for a in operands:
            t = self._track(a)
            if t is not None:
                a_shape = meta(a)
                dims.add(t.dim + nd - len(a_shape))
                tracks.append(t)
            elif isinstance(a, fx.Node) and isinstance(a.meta.get("spartan_shape"), tuple):
                plain.append(a.meta["spartan_shape"])
        if len(dims) != 1:
            raise Pin
        (d,) = dims
        for s in plain:  # an untraced tensor (parameter, input) broadcast along the channels
            i = d - (nd - len(s))
            if 0 <= i < len(s) and s[i] != 1:
                raise Pin
        for t in tracks[1:]:
            if len(t.elems) != len(tracks[0].elems):
                raise Pin
            self.uf.union_all(tracks[0].elems, t.elems)
        return Track(tracks[0].elems, d)

    def _cat(self, node: fx.Node, shape: Any) -> Track:
        tensors = node.args[0] if node.args else node.kwargs["tensors"]
        dim = arg(node, 1, "dim", 0)
        nd = len(shape)
        dim %= nd
        parts: list[tuple[Track | None, Any]] = [
            (self._track(a), meta(a)) for a in tensors]  # type: ignore[union-attr]
        if any(t is not None and t.dim == dim for t, _ in parts):
            out = self.uf.new(shape[dim])
            offset = 0
            for t, s in parts:
                n = s[dim]
                if t is not None and t.dim == dim:
                    self.uf.union_all(out[offset:offset + n], t.elems)
                else:
                    self.uf.pin(out[offset:offset + n])
                    if t is not None:
                        self.uf.pin(t.elems)
                offset += n
            return Track(out, dim)
        dims = {t.dim for t, _ in parts if t is not None}
        if len(dims) != 1:
            raise Pin
        (d,) = dims
        tracks = [t for t, _ in parts if t is not None]
        for t in tracks[1:]:
            self.uf.union_all(tracks[0].elems, t.elems)
        if any(t is None and s[d] != 1 for t, s in parts):
            raise Pin
        return Track(tracks[0].elems, d)


def _first_shape(s: Any) -> Any:
    return s if isinstance(s, tuple) and (not s or isinstance(s[0], int)) else None


def _positions(shape: Any, kind: str) -> float:
    if not isinstance(shape, tuple) or not shape or not isinstance(shape[0], int):
        return 1.0
    if kind == "conv":
        return float(math.prod(shape[2:]))
    return float(math.prod(shape[1:-1])) if len(shape) > 2 else 1.0


def _flat_nodes(x: Any) -> Iterator[fx.Node]:
    if isinstance(x, fx.Node):
        yield x
    elif isinstance(x, (tuple, list)):
        for v in x:
            yield from _flat_nodes(v)
    elif isinstance(x, dict):
        for v in x.values():
            yield from _flat_nodes(v)


def _flat_tracks(t: Any) -> Iterator[Track]:
    if isinstance(t, Track):
        yield t
    elif isinstance(t, tuple):
        for v in t:
            yield from _flat_tracks(v)


