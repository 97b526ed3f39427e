"""Coupled channels of a model: which output channels, hidden units and heads can go, together.

A model is traced with torch.fx (`symbolic_trace`, standard torch.nn modules and attention
modules as leaves) and run once on example inputs to learn every value's shape. Each channel
of each traced activation is an element of a union-find; ops that force two channels to stay
together join them:

- a residual sum / product (add, sub, mul, div of two traced tensors, broadcast aligned),
- a concatenation (each input's channels join their slice of the output's),
- a depthwise conv (output channel j joins input channel j // multiplier) and a grouped conv
  (channel j of every group joins channel j of the others, so every group keeps as many),
- a BatchNorm, activation, pooling, dropout, a mean over other dims, a flatten / reshape /
  permute that keeps the channel dim whole (they pass the channels through).

A connected set of elements is one *item*, which `structure="channels"` keeps or removes as a
whole. Elements that reach something not understood (a LayerNorm or GroupNorm, whose
statistics mix channels; a softmax; an op not listed above; a parameter or constant broadcast
along the channels; the model's inputs and outputs) are *pinned*, and so is everything joined
to them: those channels are never removed. Attention modules (nn.MultiheadAttention, and
modules with q_proj / k_proj / v_proj / o_proj Linear layers and a head_dim, as in Hugging Face
models) are leaves whose heads are items; their embedding inputs and outputs are pinned.

Where tracing fails (data-dependent control flow), each child module is traced on its own
with its inputs and outputs pinned (logged as a warning naming the module), down to the leaves.
"""

from __future__ import annotations

import inspect
import logging
import math
import operator
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

log = logging.getLogger(__name__)

Shape = tuple[int, ...]


# -- attention modules --------------------------------------------------------------------
def attention_heads(module: nn.Module) -> tuple[int, int] | None:
    """(heads, head_dim) of an attention module whose heads can be items, else None."""
    if isinstance(module, nn.MultiheadAttention):
        if module.bias_k is not None or module.add_zero_attn:
            return None
        if module.kdim != module.embed_dim or module.vdim != module.embed_dim:
            return None
        return module.num_heads, module.head_dim
    projections = [getattr(module, n, None) for n in ("q_proj", "k_proj", "v_proj")]
    out = getattr(module, "o_proj", None) or getattr(module, "out_proj", None)
    head_dim = getattr(module, "head_dim", None)
    if not all(isinstance(p, nn.Linear) for p in [*projections, out]):
        return None
    if not isinstance(head_dim, int) or head_dim <= 0:
        return None
    widths = {p.out_features for p in projections}  # type: ignore[union-attr]
    width = widths.pop()
    if widths or width % head_dim or out.in_features != width:  # type: ignore[union-attr]
        return None  # grouped-query attention (fewer k / v heads) is left whole
    return width // head_dim, head_dim


# -- the result ---------------------------------------------------------------------------
@dataclass
class Layer:
    """A Linear, Conv2d or attention module with at least one side whose channels can go.

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
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        return module.weight
    return module.q_proj.weight  # type: ignore[union-attr, return-value]


# -- union-find over channels -------------------------------------------------------------
class _UnionFind:
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
class _Track:
    """The channels of one traced tensor: one element per index of dimension `dim`."""

    elems: list[int]
    dim: int


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
_PASS_MODULES = (nn.ReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Dropout, nn.Dropout2d,
                 nn.Identity, nn.LeakyReLU, nn.Hardswish, nn.ReLU6, nn.ELU, nn.Mish,
                 nn.Softplus, nn.Hardtanh, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
                 nn.AdaptiveMaxPool2d)


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if attention_heads(m) is not None or isinstance(m, nn.MultiheadAttention):
            return True
        return super().is_leaf_module(m, module_qualified_name)


class _Shapes(fx.Interpreter):
    """Runs the traced graph once, recording each value's shape (tuples of shapes for tuples)."""

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        n.meta["spartan_shape"] = _shape_of(out)
        return out


def _shape_of(x: Any) -> Any:
    if isinstance(x, Tensor):
        return tuple(x.shape)
    if isinstance(x, (tuple, list)):
        return tuple(_shape_of(v) for v in x)
    return None


@dataclass
class _Found:
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    norms: dict[str, list[int]] = field(default_factory=dict)
    fallbacks: list[str] = field(default_factory=list)


class _Analysis:
    """One pass over a traced graph, joining and pinning channels (rules in the module doc)."""

    def __init__(self, uf: _UnionFind, found: _Found, root: nn.Module, prefix: str) -> None:
        self.uf, self.found, self.root, self.prefix = uf, found, root, prefix
        self.tracks: dict[fx.Node, Any] = {}

    def run(self, graph: fx.Graph) -> None:
        for node in graph.nodes:
            try:
                self.tracks[node] = self._node(node)
            except _Pin:
                self._pin_args(node)
                self.tracks[node] = None

    # helpers
    def _track(self, a: Any) -> _Track | None:
        t = self.tracks.get(a) if isinstance(a, fx.Node) else None
        return t if isinstance(t, _Track) else None

    def _pin_args(self, node: fx.Node) -> None:
        for a in _flat_nodes((node.args, node.kwargs)):
            t = self.tracks.get(a)
            for tr in _flat_tracks(t):
                self.uf.pin(tr.elems)

    def _node(self, node: fx.Node) -> Any:
        op = node.op
        if op in ("placeholder", "get_attr"):
            return None
        if op == "output":
            raise _Pin
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
        if isinstance(mod, nn.Conv2d):
            return self._conv(name, mod, node, x, shape)
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if x is None or x.dim != 1 or len(x.elems) != mod.num_features:
                raise _Pin
            seen = self.found.norms.get(name)
            if seen is not None:
                self.uf.union_all(seen, x.elems)
            else:
                self.found.norms[name] = x.elems
            return x
        if isinstance(mod, _PASS_MODULES):
            if x is None:
                return None
            if isinstance(mod, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
                                nn.AdaptiveMaxPool2d)) and x.dim != 1:
                raise _Pin
            return x
        if isinstance(mod, nn.Flatten):
            return self._flatten(x, node, mod.start_dim, mod.end_dim)
        heads = attention_heads(mod)
        if heads is not None:
            self._pin_args(node)
            elems = self._layer_once(name, "attention", None, heads[0], shape=None)
            self.found.layers[name]["head_dim"] = heads[1]
            tokens = _first_shape(_meta(node.args[0])) if node.args else None
            batch_first = getattr(mod, "batch_first", True)
            if tokens is not None and len(tokens) == 3:
                self.found.layers[name]["positions"] = float(
                    tokens[1] if batch_first else tokens[0])
            del elems
            return None
        raise _Pin

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

    def _linear(self, name: str, mod: nn.Linear, node: fx.Node, x: _Track | None,
                shape: Any) -> _Track:
        in_shape = _meta(node.args[0])
        ndim = len(in_shape) if isinstance(in_shape, tuple) else 0
        in_elems = None
        if x is not None:
            if x.dim == ndim - 1 and len(x.elems) == mod.in_features:
                in_elems = x.elems
            else:
                self.uf.pin(x.elems)
        out = self._layer_once(name, "linear", in_elems, mod.out_features, shape)
        return _Track(out, len(shape) - 1)

    def _conv(self, name: str, mod: nn.Conv2d, node: fx.Node, x: _Track | None,
              shape: Any) -> _Track:
        cin, cout, g = mod.in_channels, mod.out_channels, mod.groups
        in_elems = None
        if x is not None:
            if x.dim == 1 and len(x.elems) == cin:
                in_elems = x.elems
            else:
                self.uf.pin(x.elems)
        first = name not in self.found.layers
        out = self._layer_once(name, "conv", in_elems, cout, shape, depthwise=g > 1 and g == cin)
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
        return _Track(out, 1)

    # methods and functions
    def _method(self, node: fx.Node, name: str, shape: Any) -> Any:
        x = self._track(node.args[0]) if node.args else None
        if name in _META_METHODS:
            return None
        if x is None and not any(self._track(a) for a in _flat_nodes(node.args[1:])):
            return None
        if name in _UNARY_METHODS:
            if any(self._track(a) for a in _flat_nodes(node.args[1:])):
                raise _Pin
            return x
        if name in _BINARY_METHODS:
            return self._binary(node, shape)
        if name in ("view", "reshape"):
            return self._reshape(x, node, shape)
        if name == "flatten":
            return self._flatten(x, node, _arg(node, 1, "start_dim", 0),
                                 _arg(node, 2, "end_dim", -1))
        if name in ("permute", "transpose"):
            return self._permute(x, node, name, shape)
        if name in _REDUCE:
            return self._reduce(x, node, shape)
        raise _Pin

    def _function(self, node: fx.Node, fn: Any, shape: Any) -> Any:
        tracked = [self._track(a) for a in _flat_nodes((node.args, node.kwargs))]
        if fn is getattr or fn is operator.getitem and self._tuple_index(node):
            return self._getitem_tuple(node) if fn is operator.getitem else None
        if not any(tracked):
            return None
        x = self._track(node.args[0]) if node.args else None
        if fn in _UNARY_FUNCS:
            if any(self._track(a) for a in _flat_nodes((node.args[1:], node.kwargs))):
                raise _Pin
            return x
        if fn in _BINARY_FUNCS:
            return self._binary(node, shape)
        if fn is torch.cat:
            return self._cat(node, shape)
        if fn is torch.flatten:
            return self._flatten(x, node, _arg(node, 1, "start_dim", 0),
                                 _arg(node, 2, "end_dim", -1))
        if fn is torch.reshape:
            return self._reshape(x, node, shape)
        if fn in (torch.permute, torch.transpose):
            return self._permute(x, node, fn.__name__, shape)
        if fn in (torch.mean, torch.sum, torch.amax, torch.amin):
            return self._reduce(x, node, shape)
        if fn in (F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d):
            if x is None or x.dim != 1 or len(tracked) > 1:
                raise _Pin
            return x
        if fn is operator.getitem:
            return self._index(x, node, shape)
        raise _Pin

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

    def _binary(self, node: fx.Node, shape: Any) -> _Track | None:
        if not isinstance(shape, tuple):
            raise _Pin
        nd = len(shape)
        operands = list(node.args[:2]) + [v for k, v in node.kwargs.items() if k == "other"]
        dims, tracks, plain = set(), [], []
        for a in operands:
            t = self._track(a)
            if t is not None:
                a_shape = _meta(a)
                dims.add(t.dim + nd - len(a_shape))
                tracks.append(t)
            elif isinstance(a, fx.Node) and isinstance(a.meta.get("spartan_shape"), tuple):
                plain.append(a.meta["spartan_shape"])
        if len(dims) != 1:
            raise _Pin
        (d,) = dims
        for s in plain:  # an untraced tensor (parameter, input) broadcast along the channels
            i = d - (nd - len(s))
            if 0 <= i < len(s) and s[i] != 1:
                raise _Pin
        for t in tracks[1:]:
            if len(t.elems) != len(tracks[0].elems):
                raise _Pin
            self.uf.union_all(tracks[0].elems, t.elems)
        return _Track(tracks[0].elems, d)

    def _cat(self, node: fx.Node, shape: Any) -> _Track:
        tensors = node.args[0] if node.args else node.kwargs["tensors"]
        dim = _arg(node, 1, "dim", 0)
        nd = len(shape)
        dim %= nd
        parts: list[tuple[_Track | None, Any]] = [
            (self._track(a), _meta(a)) for a in tensors]  # type: ignore[union-attr]
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
            return _Track(out, dim)
        dims = {t.dim for t, _ in parts if t is not None}
        if len(dims) != 1:
            raise _Pin
        (d,) = dims
        tracks = [t for t, _ in parts if t is not None]
        for t in tracks[1:]:
            self.uf.union_all(tracks[0].elems, t.elems)
        if any(t is None and s[d] != 1 for t, s in parts):
            raise _Pin
        return _Track(tracks[0].elems, d)

    def _flatten(self, x: _Track | None, node: fx.Node, start: int, end: int) -> _Track | None:
        if x is None:
            return None
        in_shape = _meta(node.args[0])
        nd = len(in_shape)
        s, e = start % nd, end % nd
        if x.dim < s:
            return x
        if x.dim > e:
            return _Track(x.elems, x.dim - (e - s))
        others = [in_shape[i] for i in range(s, e + 1) if i != x.dim]
        if math.prod(others) == 1:
            return _Track(x.elems, s)
        raise _Pin

    def _reshape(self, x: _Track | None, node: fx.Node, shape: Any) -> _Track | None:
        if x is None:
            return None
        in_shape = _meta(node.args[0])
        before = math.prod(in_shape[:x.dim])
        for k in range(len(shape)):
            if math.prod(shape[:k]) == before and shape[k] == in_shape[x.dim]:
                return _Track(x.elems, k)
        raise _Pin

    def _permute(self, x: _Track | None, node: fx.Node, name: str, shape: Any) -> _Track | None:
        if x is None:
            return None
        nd = len(shape)
        rest = [a for a in node.args[1:]] + list(node.kwargs.values())
        if name == "permute":
            order = rest[0] if len(rest) == 1 and isinstance(rest[0], (list, tuple)) else rest
            order = [int(o) % nd for o in order]  # type: ignore[arg-type, union-attr]
            return _Track(x.elems, order.index(x.dim))
        a, b = (int(rest[0]) % nd, int(rest[1]) % nd)  # type: ignore[arg-type]
        return _Track(x.elems, b if x.dim == a else a if x.dim == b else x.dim)

    def _reduce(self, x: _Track | None, node: fx.Node, shape: Any) -> _Track | None:
        if x is None:
            return None
        in_shape = _meta(node.args[0])
        nd = len(in_shape)
        dims = _arg(node, 1, "dim", None)
        keep = bool(_arg(node, 2, "keepdim", False))
        if dims is None:
            raise _Pin
        dims = [dims] if isinstance(dims, int) else list(dims)
        dims = [int(d) % nd for d in dims]
        if x.dim in dims:
            raise _Pin
        return _Track(x.elems, x.dim if keep else x.dim - sum(d < x.dim for d in dims))

    def _index(self, x: _Track | None, node: fx.Node, shape: Any) -> _Track | None:
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
                    raise _Pin
                in_i += 1
            elif isinstance(entry, slice):
                if in_i == x.dim:
                    if entry != slice(None):
                        raise _Pin
                    pos = out_i
                in_i, out_i = in_i + 1, out_i + 1
            else:
                raise _Pin
        return _Track(x.elems, pos if pos is not None else out_i + x.dim - in_i)


class _Pin(Exception):
    """Raised by a rule: the node's traced inputs are pinned, its output is not traced."""


def _meta(a: Any) -> Any:
    """The recorded shape of a node's value (None for non-nodes and non-tensors)."""
    return a.meta.get("spartan_shape") if isinstance(a, fx.Node) else None


def _arg(node: fx.Node, pos: int, name: str, default: Any) -> Any:
    if len(node.args) > pos:
        return node.args[pos]
    return node.kwargs.get(name, default)


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


def _flat_tracks(t: Any) -> Iterator[_Track]:
    if isinstance(t, _Track):
        yield t
    elif isinstance(t, tuple):
        for v in t:
            yield from _flat_tracks(v)


# -- driver -------------------------------------------------------------------------------
def _capture_inputs(model: nn.Module, example: tuple[Any, ...]) -> dict[str, tuple[Any, Any]]:
    """(args, kwargs) of every module's first call in one forward pass."""
    seen: dict[str, tuple[Any, Any]] = {}
    hooks = []
    for name, mod in model.named_modules():
        def hook(m: nn.Module, args: Any, kwargs: Any, n: str = name) -> None:
            seen.setdefault(n, (args, kwargs))
        hooks.append(mod.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        model(*example)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _positional(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
    bound = inspect.signature(module.forward).bind(*args, **kwargs)
    bound.apply_defaults()
    return list(bound.arguments.values())


def _trace_part(module: nn.Module, prefix: str, inputs: dict[str, tuple[Any, Any]],
                uf: _UnionFind, found: _Found, top: bool) -> None:
    name = prefix.rstrip(".")
    if name not in inputs:
        return  # never called in the example forward: nothing to learn, nothing pruned
    args, kwargs = inputs[name]
    leaf = _Tracer().is_leaf_module(module, name) if not top else False
    try:
        if leaf:
            raise TypeError("a leaf module on its own")
        graph = _Tracer().trace(module)
        gm = fx.GraphModule(module, graph)
        _Shapes(gm).run(*_positional(module, args, kwargs))
    except Exception as exc:  # noqa: BLE001 (any tracing failure: fall back to the children)
        if not leaf:
            msg = f"{name or 'the model'}: not traceable ({type(exc).__name__}: " \
                  f"{str(exc).splitlines()[0][:160] if str(exc) else ''}); its children are " \
                  "traced one by one with their inputs and outputs kept"
            log.warning("%s", msg)
            found.fallbacks.append(msg)
            for child_name, child in module.named_children():
                _trace_part(child, f"{prefix}{child_name}.", inputs, uf, found, False)
            return
        graph = None
    if graph is None:
        heads = attention_heads(module)
        if heads is not None:  # an attention leaf traced alone: its heads are still items
            found.layers[name] = {"kind": "attention", "in": None, "out": uf.new(heads[0]),
                                  "positions": 1.0, "head_dim": heads[1]}
        return
    _Analysis(uf, found, module, prefix).run(graph)


def trace_channels(model: nn.Module, example_inputs: Any) -> ChannelGraph:
    """The items of `model` (see module doc). example_inputs: one input or a tuple of them
    (run once in eval mode, without gradients)."""
    example = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            inputs = _capture_inputs(model, example)
            uf, found = _UnionFind(), _Found()
            _trace_part(model, "", inputs, uf, found, True)
    finally:
        model.train(was_training)
    return _resolve(model, uf, found)


def _resolve(model: nn.Module, uf: _UnionFind, found: _Found) -> ChannelGraph:
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
                mod.q_proj.in_features  # type: ignore[union-attr]
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
