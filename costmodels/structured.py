"""Profile a model for structured (channel) sparsity: each layer's latency at kept widths.

For every layer whose width can change (spartan.channels: Linear, Conv1d / Conv2d, attention
heads) a dense module of the kept shape runs on the layer's own input (captured by a probe forward,
sliced to the kept inputs) at a grid of (kept_in, kept_out) fractions: both sides where both
can shrink, one side otherwise (a depthwise conv shrinks both together; a grouped conv keeps
multiples of its groups; attention keeps whole heads). Every shape of every layer is timed in
one round robin (the quietest of a few rounds, costmodels.timing.time_quietest), so that load
drifting during the profile hits all samples alike. A sample records kept_in, kept_out and,
as nnz_blocks, the input-output pairs its weight connects (so the file stays a valid weights
profile, DESIGN.md).

The whole models (the dense one, the calibration models and any `alongside`) are timed apart
from the layers, in a round robin of their own, as the worker times a shrunk model against the
finalized one (worker.speedup.shrunk_report): inside the layers' round robin, between some 35
other callables, the same models ran 15-25% slower (1.49 vs 1.25 ms for the dense MLP
64-1024-1024-10 at batch 64, 0.47 vs 0.35 ms at half width), and the calibration put that
slowdown on every layer, so shrunk models ran 7-30% faster than promised. The profile says so
in "whole_model_timing" (absent in older profiles: timed with the layers).

Calibration: the whole model, shrunk uniformly to a few fractions of every layer group's items
(spartan.shrink.apply_plan), is timed too. The fit (costmodels.fit) puts the time the layers do
not explain (BatchNorm, activations, pooling, residual sums: work per activation channel) on
the layers' per-output-channel slope, and the rest in the overhead; these samples are also the
whole-model check of the prediction.
"""

from __future__ import annotations

import copy
import logging
import math
import sys
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from spartan_service.costmodels.schema import validate_profile
from spartan_service.costmodels.timing import (
    ROUNDS,
    device_label,
    keep_freed_memory,
    machine_info,
    time_quietest,
)

log = logging.getLogger(__name__)

FRACTIONS = (0.125, 0.25, 0.5, 0.75, 1.0)
QUICK_FRACTIONS = (0.25, 0.5, 1.0)
CALIBRATION = (1.0, 0.75, 0.5, 0.3)
QUICK_CALIBRATION = (1.0, 0.5, 0.3)
INTERLEAVE_BYTES = 256 * 2**20  # shaped layer copies held at once for one round robin
WHOLE_MODEL_TIMING = "apart"  # whole models in a round robin of their own (module doc)


def _capture(model: nn.Module, x: Tensor, names: list[str]) -> dict[str, Tensor]:
    seen: dict[str, Tensor] = {}
    hooks = []
    for name in names:
        def hook(m: nn.Module, args: Any, kwargs: Any, n: str = name) -> None:
            first = args[0] if args else next(iter(kwargs.values()), None)
            if isinstance(first, Tensor):
                seen.setdefault(n, first)
        hooks.append(model.get_submodule(name).register_forward_pre_hook(hook, with_kwargs=True))
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _round(f: float, full: int, mult: int) -> int:
    return max(mult, min(full, round(f * full / mult) * mult))


def _grid(lay: Any, fractions: tuple[float, ...]) -> list[tuple[int, int]]:
    """(kept_in, kept_out) shapes to time (module doc)."""
    from spartan.channel_graph import kv_groups

    mod = lay.module
    n_in, n_out = lay.in_items.numel(), lay.out_items.numel() * lay.head_dim
    vin, vout = bool((lay.in_items >= 0).any()), bool((lay.out_items >= 0).any())
    if lay.kind == "attention":
        h, d = lay.out_items.numel(), lay.head_dim
        rep = kv_groups(mod)  # grouped-query attention keeps whole groups of heads
        shapes = sorted({(n_in, _round(f, h, rep) * d) for f in fractions})
        if len(shapes) < 3:  # too few groups to fit a line: time head counts between them
            shapes = sorted({(n_in, _round(f, h, 1) * d) for f in fractions})
        return shapes
    if lay.kind == "conv" and lay.depthwise:
        k = mod.out_channels // mod.in_channels
        return sorted({(c, c * k) for c in {_round(f, n_in, 1) for f in fractions}})
    g = mod.groups if lay.kind == "conv" else 1
    ins = {_round(f, n_in, g) for f in fractions} if vin else {n_in}
    outs = {_round(f, n_out, g) for f in fractions} if vout else {n_out}
    return sorted((i, o) for i in ins for o in outs)


def _module_at(lay: Any, kin: int, kout: int, like: Tensor) -> nn.Module:
    from spartan.attention_layout import has_bias
    from spartan.channel_graph import kv_groups
    from spartan.shrink import ShrunkAttention, conv_like

    mod = lay.module
    kw: dict[str, Any] = {"device": like.device, "dtype": like.dtype}
    if lay.kind == "linear":
        return nn.Linear(kin, kout, bias=mod.bias is not None, **kw)
    if lay.kind == "conv":
        groups = kin if lay.depthwise else mod.groups
        return conv_like(mod, kin, kout, groups, **kw)
    batch_first = getattr(mod, "batch_first", True)
    bias = mod.in_proj_bias is not None if isinstance(mod, nn.MultiheadAttention) else \
        has_bias(mod)
    heads = kout // lay.head_dim  # grouped-query attention: whole groups (_grid), fewer k / v
    rep = kv_groups(mod)
    return ShrunkAttention(kin, heads, lay.head_dim, bias=bias, out_bias=bias,
                           batch_first=batch_first, kv_heads=heads // rep if heads % rep == 0
                           else heads, **kw)


def _call(lay: Any, module: nn.Module, x: Tensor) -> Any:
    if lay.kind == "attention":
        return module(x, x, x, need_weights=False)
    return module(x)


def _slice_in(lay: Any, x: Tensor, kin: int) -> Tensor:
    if lay.kind == "attention" or kin == x.shape[1 if lay.kind == "conv" else -1]:
        return x
    return (x[:, :kin] if lay.kind == "conv" else x[..., :kin]).contiguous()


def pairs_of(lay: Any, kin: int, kout: int) -> int:
    if lay.kind == "conv" and lay.depthwise:
        return kout
    g = lay.module.groups if lay.kind == "conv" else 1
    return kin * kout // g


def _layer_fns(lay: Any, x: Tensor, fractions: tuple[float, ...]
               ) -> tuple[list[tuple[int, int]], list[Callable[[], Any]]]:
    """The shapes to time for one layer and a callable per shape."""
    shapes = _grid(lay, fractions)
    mods = [_module_at(lay, i, o, lay.weight).eval() for i, o in shapes]
    return shapes, [partial(_call, lay, m, _slice_in(lay, x, i))
                    for m, (i, o) in zip(mods, shapes, strict=True)]


def _layer_entry(lay: Any, shapes: list[tuple[int, int]],
                 results: list[tuple[float, float]]) -> dict[str, Any]:
    samples = [{"kept_in": i, "kept_out": o, "nnz_blocks": pairs_of(lay, i, o),
                "latency": med, "spread": iqr}
               for (i, o), (med, iqr) in zip(shapes, results, strict=True)]
    full = (lay.in_items.numel(), lay.out_items.numel() * lay.head_dim)
    dense = next((s["latency"] for s in samples if (s["kept_in"], s["kept_out"]) == full),
                 max(s["latency"] for s in samples))
    mod = lay.module
    return {"name": lay.name, "shape": list(lay.weight.shape), "block": [1, 1],
            "structure": "channels", "kind": lay.kind, "kernel": "dense",
            "groups": int(getattr(mod, "groups", 1)) if lay.kind == "conv" else 1,
            "depthwise": lay.depthwise, "head_dim": lay.head_dim, "positions": lay.positions,
            "full": list(full), "dense_latency": dense, "samples": samples}


def _uniform_drop(graph: Any, fraction: float) -> Tensor:
    """Drop all but the first ceil(fraction x n) items of every layer group."""
    drop = torch.zeros(graph.n_items, dtype=torch.bool)
    for members in graph.groups:
        keep = max(1, math.ceil(fraction * members.numel()))
        drop[members[keep:]] = True
    return drop


def _calibration_models(model: nn.Module, graph: Any, fractions: tuple[float, ...]
                        ) -> tuple[list[nn.Module], list[dict[str, Any]]]:
    from spartan.channel_costs import widths
    from spartan.shrink import apply_plan, shrink_plan

    models, rows = [], []
    dense_act = sum(lay.positions * lay.out_items.numel() * lay.head_dim
                    for lay in graph.layers.values())
    for f in fractions:
        drop = _uniform_drop(graph, f)
        small = apply_plan(copy.deepcopy(model), shrink_plan(graph, drop)).eval()
        keep = ~drop
        w = {name: list(map(int, widths(lay, keep))) for name, lay in graph.layers.items()}
        act = sum(graph.layers[n].positions * w[n][1] for n in w) / dense_act
        models.append(small)
        rows.append({"keep_fraction": f, "widths": w, "activation_fraction": act})
    return models, rows


def profile_channels(
    model: nn.Module,
    example_input: Tensor,
    device: str | torch.device = "cpu",
    batch: int | None = None,
    fractions: tuple[float, ...] | list[float] | None = None,
    repeats: int | None = None,
    warmup: int | None = None,
    quick: bool = False,
    progress: bool = True,
    calibrate: bool = True,
    stable_memory: bool = True,
    alongside: Sequence[Callable[[], Any]] = (),
) -> dict[str, Any]:
    """A validated structured profile of `model` (module doc). Raises ValueError.

    alongside: callables timed in the same round robin as the whole models (a deployment
    check: the models whose latency the cost model predicts, measured under the same load
    and in the same way as the calibration models); their
    (median, IQR) ms are the profile's "alongside" list.
    example_input: one batch as the model takes it; `batch` repeats its rows to that size.
    quick: 3 widths per side, few repeats (for tests, not for decisions).
    """
    from spartan.channels import trace_channels

    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda requested but CUDA is not available")
    fr = tuple(fractions) if fractions is not None else (QUICK_FRACTIONS if quick else FRACTIONS)
    if not fr or any(not 0 < f <= 1 for f in fr):
        raise ValueError(f"fractions must lie in (0, 1], got {list(fr)}")
    timing: dict[str, Any] = {"repeats": repeats or (5 if quick else 25),
              "warmup": warmup if warmup is not None else (1 if quick else 3),
              "min_time": 5e-5 if quick else 2e-4, "rounds": 1 if quick else ROUNDS}
    kept = keep_freed_memory() if stable_memory else False
    model = copy.deepcopy(model).to(dev).eval()
    x = example_input.to(dev)
    if batch is not None:
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        x = x[torch.arange(batch, device=dev) % x.shape[0]]
    with torch.inference_mode():
        graph = trace_channels(model, x[:2])
        if not graph.layers:
            raise ValueError("no layer of this model can lose channels (see spartan.channels)")
        inputs = _capture(model, x, list(graph.layers))
        missing = [name for name in graph.layers if name not in inputs]
        if missing:
            raise ValueError(f"layer {missing[0]!r} was not called in the probe forward pass")
        cal_models, calibration = _calibration_models(
            model, graph, QUICK_CALIBRATION if quick else CALIBRATION) if calibrate else ([], [])
        whole = [partial(model, x)] + [partial(m, x) for m in cal_models] + list(alongside)
        layers = _time_layers(graph, inputs, fr, dev, timing, progress)
        whole_times = time_quietest(whole, device=dev, **timing)  # apart (module doc)
    dense = whole_times[0][0]
    for row, (med, iqr) in zip(calibration, whole_times[1:], strict=False):
        row["latency"], row["spread"] = med, iqr
    overhead = max(0.0, dense - sum(lay["dense_latency"] for lay in layers))
    machine = machine_info(dev) | {"kernel": "dense", "batch": int(x.shape[0]),
                                   "input_shape": list(x.shape), "keep_freed_memory": kept,
                                   **timing}
    profile = {"device": device_label(dev), "unit": "ms", "structure": "channels",
               "machine": machine, "overhead": overhead, "dense_model_latency": dense,
               "layers": layers, "calibration": calibration,
               "fallbacks": graph.fallbacks, "whole_model_timing": WHOLE_MODEL_TIMING}
    if alongside:
        profile["alongside"] = [{"latency": med, "spread": iqr}
                                for med, iqr in whole_times[1 + len(calibration):]]
    validate_profile(profile)
    return profile


def _time_layers(graph: Any, inputs: dict[str, Tensor], fractions: tuple[float, ...],
                 dev: torch.device, timing: dict[str, Any], progress: bool
                 ) -> list[dict[str, Any]]:
    """Every layer shape timed in one round robin, so that the machine's load drifts alike
    over all samples (timings drifted 2x between layers profiled minutes apart); per layer,
    as before, where the shaped copies would hold more than INTERLEAVE_BYTES of weights at
    once."""
    bound = sum(len(_grid(lay, fractions)) * lay.weight.numel() * lay.weight.element_size()
                for lay in graph.layers.values())  # every shape at full size: an upper bound
    if bound <= INTERLEAVE_BYTES:
        jobs = [(lay, *_layer_fns(lay, inputs[name], fractions))
                for name, lay in graph.layers.items()]
        fns = [fn for _, _, layer_fns in jobs for fn in layer_fns]
        results = time_quietest(fns, device=dev, **timing)
        layers, at = [], 0
        for lay, shapes, layer_fns in jobs:
            layers.append(_layer_entry(lay, shapes, results[at:at + len(layer_fns)]))
            at += len(layer_fns)
        return layers
    layers = []
    for name, lay in tqdm(graph.layers.items(), desc="profiling", unit="layer",
                          file=sys.stderr, disable=not progress):
        shapes, layer_fns = _layer_fns(lay, inputs[name], fractions)
        layers.append(_layer_entry(lay, shapes, time_quietest(layer_fns, device=dev,
                                                              **timing)))
    return layers
