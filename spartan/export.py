"""Deployable sparse models: `to_sparse` picks a kernel per layer, `save_sparse` / `load_sparse`
(spartan.sparse_io) keep the sparse layout in a safetensors file (no pickle).

A masked weight (Linear, Conv2d, attention projection) runs on dense, CSR, BSR (when its
nonzeros fill whole square blocks) or 2:4 semi-structured kernels (CUDA sm80+, 2:4 weights).
With kernel="auto" each layer is timed on the spot on its own input (captured from `example`,
or a random batch for a Linear) and keeps the fastest kernel; a sparse kernel must beat dense
by `margin` or the layer stays dense. Outputs equal the dense-with-zeros model's.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from spartan.kernels import (
    SparseConv2d,
    SparseLinear,
    conv_matrix_ok,
    is_n_m,
    kernel_name,
    replace_module,
    semi_structured_ok,
    square_block,
)
from spartan.sparse_attention import SparseMultiheadAttention, attention_ok, projection_weights
from spartan.timing import median_ms

log = logging.getLogger(__name__)

KernelArg = str | Mapping[str, str]
BuildModel = Callable[[str, dict[str, Any], tuple[int, ...], int], nn.Module]


class SparseModel(nn.Module):
    """A model whose masked layers run on the kernels in `plan` (parameter name -> choice).

    Built on its device: the sparse weights are plain attributes, so `.to()` and
    `state_dict()` do not carry them; rebuild with to_sparse / load_sparse, save with `save`.
    """

    def __init__(self, module: nn.Module, plan: dict[str, dict[str, Any]],
                 spec: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.module, self.plan, self.spec = module, plan, spec

    @property
    def kernels(self) -> dict[str, str]:
        return {name: p["kernel"] for name, p in self.plan.items()}

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    def save(self, path: str | Path) -> None:
        from spartan.sparse_io import save_sparse

        save_sparse(self, path)


def _targets(model: nn.Module) -> dict[str, tuple[nn.Module, dict[str, Tensor]]]:
    """Module name -> (module, {parameter name on the model: weight}) for every maskable layer."""
    out: dict[str, tuple[nn.Module, dict[str, Tensor]]] = {}
    inside: list[str] = []
    for name, mod in model.named_modules():
        if any(name.startswith(p + ".") for p in inside):
            continue
        pre = f"{name}." if name else ""
        if isinstance(mod, nn.MultiheadAttention):
            inside.append(name)
            if attention_ok(mod):
                out[name] = (mod, {pre + k: w for k, w in projection_weights(mod).items()})
        elif isinstance(mod, (nn.Linear, nn.Conv2d)):
            out[name] = (mod, {pre + "weight": mod.weight})
    return out


def _candidates(mod: nn.Module, w: Tensor) -> dict[str, tuple[int, int]]:
    """Kernels that compute this weight exactly, with the BSR block of its matrix."""
    out = {"dense": (1, 1)}
    conv = isinstance(mod, nn.Conv2d)
    if isinstance(mod, nn.Conv2d) and not conv_matrix_ok(mod):
        return out
    if w.dtype in (torch.float32, torch.float64) or w.is_cuda:
        out["csr"] = (1, 1)
        b = square_block(w.reshape(w.shape[0], -1))
        if b > 1:
            out["bsr"] = (b, b)
    if not conv and semi_structured_ok(w) and is_n_m(w):
        out["semi_structured"] = (1, 1)
    return out


def _build(mod: nn.Module, weights: dict[str, Tensor], choice: dict[str, dict[str, Any]],
           prefix: str) -> nn.Module:
    kern = {n[len(prefix):]: c["kernel"] for n, c in choice.items()}
    blocks = {n[len(prefix):]: tuple(c["block"]) for n, c in choice.items()}
    if isinstance(mod, nn.MultiheadAttention):
        ws = {n[len(prefix):]: w.detach() for n, w in weights.items()}
        return SparseMultiheadAttention(mod, ws, kern, blocks)  # type: ignore[arg-type]
    (k, w), = ((kern[n[len(prefix):]], w) for n, w in weights.items())
    block = blocks["weight"]
    if isinstance(mod, nn.Conv2d):
        return SparseConv2d(mod, w, k, matrix=block)  # type: ignore[arg-type]
    assert isinstance(mod, nn.Linear)
    return SparseLinear(w, mod.bias, k, block)  # type: ignore[arg-type]


def _capture(model: nn.Module, names: list[str], example: Any) -> dict[str, tuple[Tensor, ...]]:
    """The input(s) each named layer sees when `model` runs on `example`."""
    seen: dict[str, tuple[Tensor, ...]] = {}
    hooks = []
    for name in names:
        def hook(m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], n: str = name
                 ) -> None:
            if n not in seen:
                got = list(args) + [kwargs[k] for k in ("query", "key", "value") if k in kwargs]
                seen[n] = tuple(got[:3])
        hooks.append(model.get_submodule(name).register_forward_pre_hook(hook, with_kwargs=True))
    try:
        if isinstance(example, dict):
            model(**example)
        else:
            model(*example) if isinstance(example, tuple) else model(example)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _layer_input(mod: nn.Module, pname: str, captured: tuple[Tensor, ...] | None,
                 batch_size: int, w: Tensor) -> Tensor | None:
    if captured is not None:
        if isinstance(mod, nn.MultiheadAttention):
            i = {"k": 1, "v": 2}.get(pname.rpartition(".")[2][:1], 0)
            x = captured[min(i, len(captured) - 1)]
            return x if pname.endswith(("k_proj_weight", "v_proj_weight")) else captured[0]
        return captured[0]
    if isinstance(mod, nn.Conv2d):
        return None  # the spatial size is unknown without an example
    return torch.randn(batch_size, w.shape[1], dtype=w.dtype, device=w.device)


def _time_layer(mod: nn.Module, pname: str, w: Tensor, kernels: dict[str, tuple[int, int]],
                x: Tensor, repeats: int) -> dict[str, float]:
    out = {}
    for k, block in kernels.items():
        try:
            if isinstance(mod, nn.Conv2d):
                layer: nn.Module = SparseConv2d(mod, w, k, matrix=block)
                xk = x
            else:
                layer, xk = SparseLinear(w, None, k, block), x.reshape(-1, w.shape[1])
            with torch.no_grad():
                out[k] = median_ms(partial(layer, xk), w.device, repeats)
        except (RuntimeError, ValueError) as exc:  # a kernel missing from this build
            log.info("%s: kernel %s unavailable (%s)", pname, k, exc)
    return out


def to_sparse(model: nn.Module, kernel: KernelArg = "auto",
              device: str | torch.device | None = None, example: Any = None,
              batch_size: int = 64, repeats: int = 7, margin: float = 0.05,
              spec: Mapping[str, Any] | None = None) -> SparseModel:
    """An inference copy of `model` whose masked layers run sparse kernels where they pay.

    kernel: "auto", one kernel for every layer ("dense", "csr", "bsr", "semi_structured"; a
    layer it does not apply to stays dense), or a mapping parameter name -> kernel (others
    dense). example: an input batch (a tuple of positional inputs, or a dict of inputs by name
    such as token ids and attention mask) for auto's timing on real activations;
    without it Linear layers are timed on random (batch_size, in) inputs and convs stay dense.
    spec: the architecture spec saved with the model ({arch, kwargs, input_shape, num_classes}).
    """
    dev = torch.device(device) if device is not None else next(
        model.parameters(), torch.empty(0)).device
    work = copy.deepcopy(model).to(dev).eval()
    if isinstance(kernel, str) and kernel != "auto":
        kernel = kernel_name(kernel)
    if isinstance(example, Tensor):
        example = example.to(dev)
    elif isinstance(example, tuple):
        example = tuple(t.to(dev) if isinstance(t, Tensor) else t for t in example)
    elif isinstance(example, dict):
        example = {k: t.to(dev) if isinstance(t, Tensor) else t for k, t in example.items()}
    targets = _targets(work)
    captured = {}
    if kernel == "auto" and example is not None:
        with torch.no_grad():
            captured = _capture(work, list(targets), example)
    plan: dict[str, dict[str, Any]] = {}
    for mname, (mod, weights) in targets.items():
        choice = {}
        for pname, w in weights.items():
            w = w.detach()
            cands = _candidates(mod, w)
            entry: dict[str, Any] = {"shape": list(w.shape)}
            if kernel == "auto":
                x = _layer_input(mod, pname, captured.get(mname), batch_size, w)
                times = {} if x is None else _time_layer(mod, pname, w, cands, x, repeats)
                best = min(times, key=times.__getitem__, default="dense")
                if "dense" in times and times[best] > times["dense"] * (1 - margin):
                    best = "dense"
                entry["latency_ms"] = times
            else:
                want = kernel if isinstance(kernel, str) else kernel_name(kernel.get(pname,
                                                                                     "dense"))
                best = want if want in cands else "dense"
                if best != want:
                    log.warning("%s: kernel %s does not apply here; kept dense", pname, want)
            choice[pname] = {"kernel": best, "block": list(cands[best]), **entry}
        plan.update(choice)
        if any(c["kernel"] != "dense" for c in choice.values()):
            pre = f"{mname}." if mname else ""
            replace_module(work, mname, _build(mod, weights, choice, pre))
    if isinstance(kernel, Mapping):
        unknown = sorted(set(kernel) - set(plan))
        if unknown:
            raise ValueError(f"no maskable weights named {unknown}")
    log.info("to_sparse: %s", {n: c["kernel"] for n, c in plan.items()})
    return SparseModel(work, plan, dict(spec) if spec is not None else None)
