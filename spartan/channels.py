"""Coupled channels of a model: which output channels, hidden units and heads can go, together.

A model is traced with torch.fx (`symbolic_trace`, standard torch.nn modules and attention
modules as leaves) and run once on example inputs to learn every value's shape. Each channel
of each traced activation is an element of a union-find; ops that force two channels to stay
together join them:

- a residual sum / product (add, sub, mul, div of two traced tensors, broadcast aligned),
- a concatenation (each input's channels join their slice of the output's),
- a depthwise conv (output channel j joins input channel j // multiplier) and a grouped conv
  (channel j of every group joins channel j of the others, so every group keeps as many),
- a BatchNorm, activation, pooling, dropout, a mean over other dims, a permute, a flatten or
  reshape that keeps the channel dim whole or merges it with others (a Linear after a flatten:
  its input features are channel x position blocks, each block read as its channel).

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
from typing import Any

import torch
from torch import Tensor, fx, nn

from spartan.channel_graph import (
    ChannelGraph,
    Found,
    Layer,
    Norm,
    UnionFind,
    attention_heads,
    head_items,
    layer_weight,
    resolve,
)
from spartan.channel_rules import Analysis

__all__ = ["ChannelGraph", "Layer", "Norm", "attention_heads", "layer_weight", "trace_channels"]

log = logging.getLogger(__name__)


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
                uf: UnionFind, found: Found, top: bool) -> None:
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
            found.layers[name] = {"kind": "attention", "in": None,
                                  "out": head_items(uf, module, heads[0]),
                                  "positions": 1.0, "head_dim": heads[1]}
        return
    Analysis(uf, found, module, prefix).run(graph)


def trace_channels(model: nn.Module, example_inputs: Any) -> ChannelGraph:
    """The items of `model` (see module doc). example_inputs: one input or a tuple of them
    (run once in eval mode, without gradients)."""
    example = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            inputs = _capture_inputs(model, example)
            uf, found = UnionFind(), Found()
            _trace_part(model, "", inputs, uf, found, True)
    finally:
        model.train(was_training)
    return resolve(model, uf, found)


