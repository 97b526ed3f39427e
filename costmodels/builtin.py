"""Built-in cost models in the cost-model file format: parameters and FLOPs.

- params: a block costs the weights it holds (R x C x kh x kw); the Sparsifier's budget is
  then the density of the maskable weights.
- flops: a block costs 2 x its weights x the layer's output positions per example (one multiply
  and one add per weight per output position: Ho x Wo for a Conv2d, the number of tokens for a
  Linear or attention projection, 1 for a Linear on vectors), found with one probe forward
  pass. Intercepts are 0: a pruned block saves exactly its cost.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from spartan_service.costmodels.profiler import layer_name


def _layers(model: nn.Module, block: tuple[int, int]) -> dict[str, tuple[str, Any, tuple[int,
                                                                                         int]]]:
    """layer name -> (param name, param, block used: `block`, or 1x1 where it does not divide)."""
    from spartan.layout import block_grid, check_block, maskable_weights

    block = check_block(block)
    out = {}
    for pname, p in maskable_weights(model).items():
        used = block if block_grid(p.shape, block) is not None else (1, 1)
        out[layer_name(pname)] = (pname, p, used)
    if not out:
        raise ValueError("the model has no maskable weights")
    return out


def _file(unit: str, layers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {"unit": unit, "device": "any", "overhead": 0.0, "layers": layers}


def params_cost_model(model: nn.Module, block: tuple[int, int] = (1, 1)) -> dict[str, Any]:
    """Cost model whose slope is the number of weights per block (intercept 0)."""
    from spartan.layout import block_numel

    layers = {name: {"intercept": 0.0, "slope": float(block_numel(p.shape, used)),
                     "block": list(used), "r2": 1.0, "mape": 0.0, "shape": list(p.shape)}
              for name, (_, p, used) in _layers(model, block).items()}
    return _file("params", layers)


def _positions(model: nn.Module, example_input: Tensor, names: dict[str, str]
               ) -> dict[str, float]:
    """Output positions per example of each owner module (module name -> count)."""
    batch = example_input.shape[0]
    found: dict[str, float] = {}

    def hook(mname: str, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
             out: Any) -> None:
        if isinstance(module, nn.MultiheadAttention):
            query = args[0] if args else kwargs["query"]
            found.setdefault(mname, query.numel() / (batch * module.embed_dim))
        elif isinstance(out, Tensor):
            weight = getattr(module, "weight", None)
            rows = weight.shape[0] if isinstance(weight, Tensor) else out.shape[-1]
            found.setdefault(mname, out.numel() / (batch * int(rows)))

    # Attention modules too: out_proj's weight is used by its parent, never called itself.
    hooked = set(names.values()) | {n for n, m in model.named_modules()
                                    if isinstance(m, nn.MultiheadAttention)}
    handles = [model.get_submodule(m).register_forward_hook(partial(hook, m), with_kwargs=True)
               for m in hooked]
    was_training = model.training
    model.eval()  # the probe must not update batch-norm statistics
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return found


def flops_cost_model(model: nn.Module, example_input: Tensor,
                     block: tuple[int, int] = (1, 1)) -> dict[str, Any]:
    """Cost model whose slope is the FLOPs per example of one block (see module doc)."""
    from spartan.layout import block_numel

    layers = _layers(model, block)
    owner = {name: pname.rpartition(".")[0] for name, (pname, _, _) in layers.items()}
    positions = _positions(model, example_input, owner)
    out = {}
    for name, (_, p, used) in layers.items():
        mname = owner[name]
        pos = positions.get(mname)
        parent = mname.rpartition(".")[0]
        if pos is None and isinstance(model.get_submodule(parent) if parent else None,
                                      nn.MultiheadAttention):
            pos = positions.get(parent)  # out_proj: weights used by the attention directly
        if pos is None:
            raise ValueError(f"layer {name!r} was not called in the probe forward pass")
        out[name] = {"intercept": 0.0, "slope": 2.0 * block_numel(p.shape, used) * pos,
                     "block": list(used), "r2": 1.0, "mape": 0.0, "shape": list(p.shape)}
    return _file("flops", out)


def channel_cost_model(model: nn.Module, example_input: Tensor, kind: str = "params",
                       graph: Any = None) -> dict[str, Any]:
    """Built-in structured cost model (params or flops) of the layers whose channels can go:
    per layer intercept 0, slope per input-output channel pair, slope_out per output channel
    (spartan.channel_costs). `graph`: the model's trace_channels, when the caller has it."""
    from spartan.channel_costs import cost_model_file
    from spartan.channels import trace_channels

    return cost_model_file(graph if graph is not None else trace_channels(model, example_input),
                           kind)
