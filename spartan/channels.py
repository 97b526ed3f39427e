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
models, and BERT's query / key / value with output.dense: spartan.attention_layout) are leaves
whose heads are items; their embedding inputs and outputs are pinned.

Where tracing fails (data-dependent control flow; Hugging Face layers, whose wrappers take
*args / **kwargs), each child module is traced on its own (logged as a warning naming the
module), down to the leaves, the members of a ModuleList included. A child's inputs and outputs
are pinned, except an output that the example forward shows only its next sibling reads: its
channels go on into that sibling's trace (spartan.channel_run), so an MLP split over two modules
(BERT's intermediate and output) still has its hidden units as items.
"""

from __future__ import annotations

import logging
from functools import partial
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
from spartan.channel_run import Run, positional, reader, record
from spartan.channel_views import Track

__all__ = ["ChannelGraph", "Layer", "Norm", "attention_heads", "layer_weight", "require_items",
           "trace_channels"]

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
def _trace_part(module: nn.Module, prefix: str, run: Run, uf: UnionFind, found: Found,
                top: bool) -> None:
    name = prefix.rstrip(".")
    if name not in run.inputs:
        if isinstance(module, (nn.ModuleList, nn.ModuleDict)):  # a container: its members run
            _trace_children(module, prefix, run, uf, found)
        return  # never called in the example forward: nothing to learn, nothing pruned
    args, kwargs = run.inputs[name]
    leaf = _Tracer().is_leaf_module(module, name) if not top else False
    try:
        if leaf:
            raise TypeError("a leaf module on its own")
        graph = _Tracer().trace(module)
        gm = fx.GraphModule(module, graph)
        values = positional(module, args, kwargs)
        _Shapes(gm).run(*values)
    except Exception as exc:  # noqa: BLE001 (any tracing failure: fall back to the children)
        if not leaf:
            msg = f"{name or 'the model'}: not traceable ({type(exc).__name__}: " \
                  f"{str(exc).splitlines()[0][:160] if str(exc) else ''}); its children are " \
                  "traced one by one with their inputs and outputs kept"
            log.warning("%s", msg)
            found.fallbacks.append(msg)
            _trace_children(module, prefix, run, uf, found)
            return
        graph = None
    if graph is None:
        heads = attention_heads(module)
        if heads is not None:  # an attention leaf traced alone: its heads are still items
            found.layers[name] = {"kind": "attention", "in": None,
                                  "out": head_items(uf, module, heads[0]),
                                  "positions": 1.0, "head_dim": heads[1]}
        return
    # a sibling's output read here alone comes with its channels (spartan.channel_run)
    links = [run.pending.pop(id(v))[0] if id(v) in run.pending and
             run.pending[id(v)][1] == name else None for v in values]
    Analysis(uf, found, module, prefix, links, partial(_link_output, run, name)).run(graph)


def _trace_children(module: nn.Module, prefix: str, run: Run, uf: UnionFind,
                    found: Found) -> None:
    """Trace each child on its own, in the order they ran, so that a producer's output can be
    linked into the sibling that alone reads it (spartan.channel_run)."""
    children = sorted(module.named_children(),
                      key=lambda c: run.first_call(f"{prefix}{c[0]}"))
    before = set(run.pending)
    for child_name, child in children:
        _trace_part(child, f"{prefix}{child_name}.", run, uf, found, False)
    for key in set(run.pending) - before:  # its reader was not traced whole: pinned
        uf.pin(run.pending.pop(key)[0].elems)


def _link_output(run: Run, name: str, track: Track) -> bool:
    """Hand the traced output of module `name` to the sibling that alone reads it (True), or
    leave it to be pinned (False)."""
    if not name:
        return False  # the model's own output
    parent = name.rpartition(".")[0]
    prefix = f"{parent}." if parent else ""
    siblings = {n for n in run.inputs if n.startswith(prefix) and n != parent
                and "." not in n[len(prefix):]}
    owner = reader(run, name, siblings)
    if owner is None:
        return False
    run.pending[id(run.outputs[name])] = (track, owner)
    return True


def trace_channels(model: nn.Module, example_inputs: Any) -> ChannelGraph:
    """The items of `model` (see module doc). example_inputs: one input or a tuple of them
    (run once in eval mode, without gradients)."""
    example = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            run = record(model, example)
            uf, found = UnionFind(), Found()
            _trace_part(model, "", run, uf, found, True)
    finally:
        model.train(was_training)
    return resolve(model, uf, found)




def require_items(graph: ChannelGraph) -> ChannelGraph:
    """`graph`, if it has an item to remove; else a ValueError that says why (the fallbacks)."""
    if graph.n_items == 0:
        raise ValueError("no channel of this model can be removed: every one is an input "
                         "or output or is read by an op that mixes channels "
                         f"({'; '.join(graph.fallbacks) or 'see spartan.channels'})")
    return graph
