"""The model.sparse.safetensors format: `save_sparse`, `sparse_bytes`, `read_sparse`,
`load_sparse` (safetensors is imported lazily: the core of spartan needs torch only).

File layout: every tensor of the model's state_dict under its name, except a sparse layer's
weight, stored as `NAME/crow_indices`, `NAME/col_indices`, `NAME/values` of its CSR (or BSR)
matrix. Metadata: `format`, `kernels` (JSON: name -> kernel, block, shape) and `model` (JSON:
the architecture spec {arch, kwargs, input_shape, num_classes}, when known; for a Hugging Face
model also `hf`, {head, config}: what spartan.hf.rebuild needs).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from spartan.export import BuildModel, SparseModel, to_sparse
from spartan.kernels import SparseConv2d, SparseLinear
from spartan.shrink import PLAN_ATTR, apply_plan
from spartan.sparse_attention import SparseMultiheadAttention

FORMAT = "spartan-sparse/1"
SHRUNK_FORMAT = "spartan-shrunk/1"  # a physically smaller model (spartan.shrink) and its plan


def _sparse_modules(model: nn.Module) -> dict[str, nn.Module]:
    kinds = (SparseLinear, SparseConv2d, SparseMultiheadAttention)
    out: dict[str, nn.Module] = {}
    for n, m in model.named_modules():
        if isinstance(m, kinds) and not any(n.startswith(p + ".") for p in out):
            out[n] = m
    return out


def _payload(model: SparseModel) -> tuple[dict[str, Tensor], dict[str, str]]:
    tensors = dict(model.module.state_dict())
    for mname, mod in _sparse_modules(model.module).items():
        pre = f"{mname}." if mname else ""
        tensors.update({pre + k: v for k, v in mod.weights().items()})  # type: ignore[operator]
    for name, c in model.plan.items():
        if c["kernel"] == "dense":
            continue
        w = tensors.pop(name)
        matrix = w.reshape(w.shape[0], -1)
        sp = matrix.to_sparse_bsr(tuple(c["block"])) if c["kernel"] == "bsr" else \
            matrix.to_sparse_csr()
        tensors[f"{name}/crow_indices"] = sp.crow_indices()
        tensors[f"{name}/col_indices"] = sp.col_indices()
        tensors[f"{name}/values"] = sp.values()
    plan = {n: {k: c[k] for k in ("kernel", "block", "shape")} for n, c in model.plan.items()}
    meta = {"format": FORMAT, "kernels": json.dumps(plan)}
    if model.spec is not None:
        meta["model"] = json.dumps(model.spec)
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, meta


def save_sparse(model: SparseModel, path: str | Path) -> None:
    """Write a SparseModel as safetensors: sparse layers as CSR / BSR components (a shrunk
    model, as save_shrunk)."""
    from safetensors.torch import save_file

    if getattr(model.module, PLAN_ATTR, None) is not None:
        save_shrunk(model.module, path, model.spec)
        return
    tensors, meta = _payload(model)
    save_file(tensors, str(path), metadata=meta)


def save_shrunk(model: nn.Module, path: str | Path, spec: dict[str, Any] | None = None) -> None:
    """Write a model made by spartan.shrink as safetensors: its tensors (new shapes) and, in
    the metadata, the plan that rebuilds it from the original architecture and that
    architecture's spec ({arch, kwargs, input_shape, num_classes}) when known."""
    from safetensors.torch import save_file

    tensors, meta = _shrunk_payload(model, spec)
    save_file(tensors, str(path), metadata=meta)


def _shrunk_payload(model: nn.Module, spec: dict[str, Any] | None
                    ) -> tuple[dict[str, Tensor], dict[str, str]]:
    plan = getattr(model, PLAN_ATTR, None)
    if plan is None:
        raise ValueError("save_shrunk takes a model made by spartan.shrink")
    meta = {"format": SHRUNK_FORMAT, "plan": json.dumps(plan)}
    if spec is not None:
        meta["model"] = json.dumps(spec)
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}, meta


def sparse_bytes(model: SparseModel) -> bytes:
    """What save_sparse writes, as bytes."""
    from safetensors.torch import save

    if getattr(model.module, PLAN_ATTR, None) is not None:
        tensors, meta = _shrunk_payload(model.module, model.spec)
    else:
        tensors, meta = _payload(model)
    return save(tensors, metadata=meta)


def read_sparse(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any],
                                           dict[str, Any] | None]:
    """(dense state_dict, kernel plan, architecture spec or None) of a model.sparse file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not a {FORMAT} file (format {meta.get('format')!r})")
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open API)
    plan: dict[str, Any] = json.loads(meta["kernels"])
    for name, c in plan.items():
        if c["kernel"] == "dense":
            continue
        parts = [tensors.pop(f"{name}/{p}") for p in ("crow_indices", "col_indices", "values")]
        shape = c["shape"]
        size = (shape[0], int(torch.tensor(shape[1:]).prod()))
        make = torch.sparse_bsr_tensor if c["kernel"] == "bsr" else torch.sparse_csr_tensor
        # Checked: a malformed index tensor in a file must not crash the process.
        sparse = make(*parts, size=size, check_invariants=True)  # type: ignore[misc]
        tensors[name] = sparse.to_dense().reshape(shape)
    spec = json.loads(meta["model"]) if "model" in meta else None
    return tensors, plan, spec


def load_sparse(path: str | Path, device: str | torch.device | None = None,
                build_model: BuildModel | None = None, model: nn.Module | None = None
                ) -> SparseModel:
    """Rebuild the fast module of `save_sparse` (a job's model.sparse.safetensors) on `device`.

    The architecture comes from `model` (an instance to fill), from the Hugging Face config
    stored in the file (a job's `hf:` model: spartan.hf.rebuild, needs transformers), or from
    `build_model(arch, kwargs, input_shape, num_classes)` applied to the spec stored in the
    file (the service's is spartan_service.zoo.build_model). The stored per-layer kernels are
    used as they are.
    """
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        fmt = (f.metadata() or {}).get("format")
    if fmt == SHRUNK_FORMAT:
        return _load_shrunk(path, device, build_model, model)
    state, plan, spec = read_sparse(path)
    model = _architecture(spec, build_model, model)
    model.load_state_dict(state, strict=True)
    kernels = {n: c["kernel"] for n, c in plan.items()}
    return to_sparse(model, kernels, device=device or "cpu", spec=spec)


def _architecture(spec: dict[str, Any] | None, build_model: BuildModel | None,
                  model: nn.Module | None) -> nn.Module:
    """The module to fill: `model`, the Hugging Face model the spec describes, or
    build_model's."""
    if model is not None:
        return model
    if spec is not None and isinstance(spec.get("hf"), dict):
        from spartan.hf import rebuild

        return rebuild(spec["hf"])
    if build_model is None or spec is None:
        raise ValueError("load_sparse needs model= or build_model= (and a file with a model "
                         "spec), e.g. build_model=spartan_service.zoo.build_model")
    shape = spec.get("input_shape")
    return build_model(spec["arch"], spec.get("kwargs", {}),
                       tuple(shape) if shape is not None else None,  # type: ignore[arg-type]
                       int(spec["num_classes"]))


def _load_shrunk(path: str | Path, device: str | torch.device | None,
                 build_model: BuildModel | None, model: nn.Module | None) -> SparseModel:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open API)
    try:
        plan = json.loads(meta["plan"])
        spec = json.loads(meta["model"]) if "model" in meta else None
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{path}: bad shrunk-model metadata ({exc})") from None
    model = _architecture(spec, build_model, model)
    apply_plan(model, plan)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path}: tensors do not fit the rebuilt model: {exc}") from None
    model = model.to(device or "cpu").eval()
    return SparseModel(model, {}, spec)
