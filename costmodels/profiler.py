"""Profile a model's maskable layers on this machine: latency vs nonzero blocks, per kernel.

For each maskable weight (spartan.layout.maskable_weights) the layer's own input, captured by
one probe forward pass, runs through the inference kernel a deployment would use
(spartan.kernels) with random block masks at each density; every (kernel, density) is
timed round-robin with warm-up, repeats, median and IQR, in the quietest of a few rounds
(costmodels.timing.time_quietest, as the deployed models are measured).

kernel="auto" times every kernel that applies and records ONE kernel per layer, so that the
layer's samples lie on one line: the sparse kernel (csr / bsr / semi) with the lowest total
latency over the densities, unless even at the lowest density it is not faster than dense, in
which case "dense" (whose cost model is flat: sparsity there buys no latency). The choice is
the layer's "kernel"; the alternatives' medians are kept under "alternatives", the dense
kernel's time with the full weight under "dense_latency".

Layers are timed on the activations the deployed model gives them: layers are profiled in
model order, and each profiled Linear / Conv2d then runs its chosen kernel in a working copy
of the model that provides the next layers' inputs. This matters: a CSR layer hands on a
transposed activation, and a dense Linear after it ran 3-5x slower on that layout than on the
dense model's contiguous one (0.6 vs 0.12 ms; timed on the dense model's activations, whole
sparse models were under-predicted by about 0.25 ms).

The model's remaining work (activations, pooling, norms, the attention core, framework
overhead) is recorded as "overhead": the time of the model with the outputs of its Linear /
Conv2d layers replayed (in the deployed layout), less the dense time of the maskable weights
that cannot be replayed because their module is never called on its own (the projections of
nn.MultiheadAttention, which have their own fitted models: counting them in the overhead too
predicted an attention model about twice too slow); the weights taken off are listed under
"overhead_excludes" (and carried into the cost model). It is measured with the dense weights;
ops whose speed depends on the data are off where a sparse layer changes them (a max-pool over
the all-zero channels of a very sparse conv ran twice as fast here), which a per-layer linear
model does not see.
"""

from __future__ import annotations

import copy
import logging
import sys
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from spartan.kernels import KERNELS, candidate_kernels, layer_module, replace_module
from spartan_service.costmodels.schema import MIN_DENSITIES, validate_profile
from spartan_service.costmodels.timing import (
    ROUNDS,
    device_label,
    keep_freed_memory,
    machine_info,
    time_quietest,
)

log = logging.getLogger(__name__)

DEFAULT_DENSITIES = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0)
QUICK_DENSITIES = (0.1, 0.4, 0.7, 1.0)


def layer_name(param_name: str) -> str:
    """Cost-model layer name of a weight: its module's name ("fc1" for "fc1.weight"), else the
    parameter name itself (e.g. "attn.in_proj_weight")."""
    return param_name[: -len(".weight")] if param_name.endswith(".weight") else param_name


def _capture(model: nn.Module, x: Tensor, owners: dict[str, nn.Module]
             ) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Input (2-D tokens for attention) and output of each owner module in one forward pass."""
    inputs: dict[str, Tensor] = {}
    outputs: dict[str, Any] = {}

    def hook(name: str, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
             out: Any) -> None:
        if name in inputs:  # a module called twice: keep its first call
            return
        first = args[0] if args else kwargs.get("query", kwargs.get("input"))
        if not isinstance(first, Tensor):
            return
        if isinstance(module, nn.MultiheadAttention):
            first = first.reshape(-1, module.embed_dim)
        inputs[name], outputs[name] = first, out

    handles = [m.register_forward_hook(partial(hook, n), with_kwargs=True)
               for n, m in owners.items()]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return inputs, outputs


def _layer_input(mname: str, inputs: dict[str, Tensor], model: nn.Module) -> Tensor:
    if mname in inputs:
        return inputs[mname]
    parent = mname.rpartition(".")[0]
    # nn.MultiheadAttention uses out_proj's weight without calling it: time it on the tokens.
    if parent in inputs and isinstance(model.get_submodule(parent), nn.MultiheadAttention):
        return inputs[parent]
    raise ValueError(f"layer {mname!r} was not called in the probe forward pass")


def _random_weights(w: Tensor, block: tuple[int, int], nnz_list: list[int],
                    gen: torch.Generator) -> list[Tensor]:
    from spartan.layout import block_grid, expand_blocks

    grid = block_grid(w.shape, block)
    assert grid is not None
    n = grid[0] * grid[1]
    out = []
    for nnz in nnz_list:
        flat = torch.zeros(n, dtype=torch.bool)
        flat[torch.randperm(n, generator=gen)[:nnz]] = True
        mask = expand_blocks(flat.reshape(grid), w.shape, block).to(w.device)
        out.append(w * mask)
    return out


def _choose(lat: dict[str, list[float]]) -> str:
    sparse = [k for k in lat if k != "dense"]
    if not sparse:
        return "dense"
    best = min(sparse, key=lambda k: sum(lat[k]))
    if "dense" in lat and lat[best][0] >= lat["dense"][0]:
        return "dense"
    return best


def _profile_layer(pname: str, w: Tensor, module: nn.Module, inp: Tensor,
                   block: tuple[int, int], kernel: str, densities: tuple[float, ...],
                   timing: dict[str, Any], gen: torch.Generator,
                   choices: Sequence[str] | None = None) -> dict[str, Any]:
    from spartan.layout import block_grid

    name, attr = layer_name(pname), pname.rpartition(".")[2]
    if block_grid(w.shape, block) is None:
        log.warning("%s: block %s does not divide %s; profiled with 1x1 blocks (as the "
                    "Sparsifier falls back)", name, block, tuple(w.shape))
        block = (1, 1)
    grid = block_grid(w.shape, block)
    assert grid is not None
    n = grid[0] * grid[1]
    nnz_list = sorted({min(n, max(1, round(d * n))) for d in densities})
    if len(nnz_list) < MIN_DENSITIES:
        raise ValueError(f"layer {name!r}: {n} blocks give only {len(nnz_list)} distinct "
                         f"densities; the fit needs {MIN_DENSITIES} (smaller blocks?)")
    applicable = candidate_kernels(module, w, block)
    if choices is not None:  # "auto" limited to these (dense always stays, as the fallback)
        applicable = [k for k in applicable if k in choices or k == "dense"]
    if kernel != "auto" and kernel not in applicable:
        raise ValueError(f"layer {name!r}: kernel {kernel!r} does not apply here "
                         f"(applicable: {', '.join(applicable)})")
    weights = _random_weights(w, block, nnz_list, gen)
    fns, keys = [], []
    for k in applicable if kernel == "auto" else [kernel]:
        try:
            mods = [layer_module(module, attr, wm, k, block) for wm in weights]
            mods[0](inp)
        except (RuntimeError, NotImplementedError, ValueError) as exc:
            if kernel != "auto":
                raise ValueError(f"layer {name!r}: kernel {k!r} failed: {exc}") from None
            log.info("%s: kernel %s unavailable (%s)", name, k, exc)
            continue
        fns += [partial(m, inp) for m in mods]
        keys += [k] * len(mods)
    fns.append(partial(layer_module(module, attr, w, "dense", block), inp))
    results = time_quietest(fns, device=w.device, **timing)
    lat: dict[str, list[float]] = {}
    spread: dict[str, list[float]] = {}
    for k, (med, iqr) in zip(keys, results[:-1], strict=True):
        lat.setdefault(k, []).append(med)
        spread.setdefault(k, []).append(iqr)
    chosen = kernel if kernel != "auto" else _choose(lat)
    samples = [{"nnz_blocks": nnz, "density": nnz / n, "latency": med, "spread": iqr}
               for nnz, med, iqr in zip(nnz_list, lat[chosen], spread[chosen], strict=True)]
    entry = {"name": name, "param": pname, "shape": list(w.shape), "block": list(block),
             "kernel": chosen, "dense_latency": results[-1][0], "samples": samples}
    if len(lat) > 1:
        entry["alternatives"] = {k: v for k, v in lat.items() if k != chosen}
    return entry


def _deploy(work: nn.Module, mname: str, module: nn.Module, w: Tensor,
            entry: dict[str, Any], called: dict[str, Tensor]) -> None:
    """Let the working copy run the layer's chosen kernel, so that the layers after it are
    timed on the activations (values and memory layout) the deployed model gives them."""
    if entry["kernel"] == "dense" or mname not in called:
        return  # dense keeps the layout; a weight its module never calls keeps its owner's
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        block = (int(entry["block"][0]), int(entry["block"][1]))
        replace_module(work, mname, layer_module(module, "weight", w, entry["kernel"], block))


def _overhead(model: nn.Module, work: nn.Module, x: Tensor, owners: list[str],
              layers: list[dict[str, Any]], timing: dict[str, Any]
              ) -> tuple[float, float, dict[str, float]]:
    """(time of everything but the maskable layers, dense model time, the dense times taken
    off for maskable layers that cannot be replayed). The replayed outputs are the working
    copy's, i.e. in the deployed kernels' layouts."""
    _, outputs = _capture(work, x, {n: work.get_submodule(n) for n in owners})
    replay = copy.deepcopy(model)
    replayed = set()
    for mname, out in outputs.items():
        module = replay.get_submodule(mname)
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            module.forward = (lambda *a, _o=out, **k: _o)  # type: ignore[method-assign]
            replayed.add(mname)
    (rest, _), (dense, _) = time_quietest([partial(replay, x), partial(model, x)],
                                          device=x.device, **timing)
    # E.g. attention projections: still inside the replayed model, and fitted on their own.
    taken = {lay["name"]: float(lay["dense_latency"]) for lay in layers
             if lay["param"].rpartition(".")[0] not in replayed}
    if taken:
        log.info("overhead %.4g ms less the dense time of %s", rest, ", ".join(taken))
    return max(0.0, rest - sum(taken.values())), dense, taken


def profile_model(
    model: nn.Module,
    example_input: Tensor,
    block: tuple[int, int] = (1, 1),
    device: str | torch.device = "cpu",
    kernel: str = "auto",
    densities: tuple[float, ...] | list[float] | None = None,
    batch: int | None = None,
    repeats: int | None = None,
    warmup: int | None = None,
    quick: bool = False,
    progress: bool = True,
    seed: int = 0,
    stable_memory: bool = True,
    choices: Sequence[str] | None = None,
    on_layer: Callable[[int, int, str], None] | None = None,
) -> dict[str, Any]:
    """A validated profile dict (shared/DESIGN.md) of every maskable layer of `model`.

    example_input: one batch as the model takes it; `batch` repeats its rows to that size.
    kernel: "auto" (see module doc) or one of dense, csr, bsr, semi for every layer.
    quick: few densities and repeats (seconds for a small MLP; for tests, not for decisions).
    stable_memory: call costmodels.timing.keep_freed_memory() first (process-wide; see there).
    choices: with kernel "auto", the kernels it may choose from (default: every kernel).
    on_layer: called as on_layer(done, total, layer name) after each layer (progress, and a
        place to stop: whatever it raises propagates).
    The model is copied; the original is left as it was. Raises ValueError.
    """
    from spartan.layout import check_block, maskable_weights, owner_of

    block = check_block(block)
    if kernel != "auto" and kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; use auto or one of {', '.join(KERNELS)}")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda requested but CUDA is not available")
    dens = tuple(densities) if densities is not None else (
        QUICK_DENSITIES if quick else DEFAULT_DENSITIES)
    if not dens or any(not 0 < d <= 1 for d in dens):
        raise ValueError(f"densities must lie in (0, 1], got {list(dens)}")
    timing = {"repeats": repeats or (5 if quick else 25),
              "warmup": warmup if warmup is not None else (1 if quick else 3),
              "min_time": 5e-5 if quick else 2e-4, "rounds": 1 if quick else ROUNDS}
    kept = keep_freed_memory() if stable_memory else False
    model = copy.deepcopy(model).to(dev).eval()
    x = example_input.to(dev)
    if batch is not None:
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        x = x[torch.arange(batch, device=dev) % x.shape[0]]
    params = maskable_weights(model)
    if not params:
        raise ValueError("the model has no maskable weights")
    owners = [p.rpartition(".")[0] for p in params]
    gen = torch.Generator().manual_seed(seed)
    layers = []
    work = copy.deepcopy(model)  # runs each profiled layer's chosen kernel (see _deploy)
    with torch.inference_mode():
        for pname, p in tqdm(params.items(), desc="profiling", unit="layer", file=sys.stderr,
                             disable=not progress):
            module, _ = owner_of(model, pname)
            mname = pname.rpartition(".")[0]
            inputs, _ = _capture(work, x, {n: work.get_submodule(n) for n in owners})
            inp = _layer_input(mname, inputs, work)
            entry = _profile_layer(pname, p.detach(), module, inp, block, kernel, dens, timing,
                                   gen, choices)
            layers.append(entry)
            _deploy(work, mname, module, p.detach(), entry, inputs)
            if on_layer is not None:
                on_layer(len(layers), len(params), entry["name"])
        overhead, dense, taken = _overhead(model, work, x, owners, layers, timing)
    machine = machine_info(dev) | {"kernel": kernel, "batch": int(x.shape[0]),
                                   "input_shape": list(x.shape), "keep_freed_memory": kept,
                                   **timing}
    from spartan_service.costmodels.hardware import collect

    profile = {"device": device_label(dev), "unit": "ms", "machine": machine,
               "hardware": collect(dev, (lay["kernel"] for lay in layers)),
               "overhead": overhead, "dense_model_latency": dense, "layers": layers}
    if taken:
        profile["overhead_excludes"] = list(taken)  # their dense_latency was taken off
    validate_profile(profile)
    return profile
