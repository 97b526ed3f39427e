"""Models from a name: the built-ins, Hugging Face folders, torchvision / timm models and
entry-point factories (`build_model`), and initial weights from a safetensors file
(`load_weights`). Names and kwargs are checked by jobs/catalog.py, the API's torch-free view.
"""

from __future__ import annotations

import inspect
import logging
from importlib import import_module
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from spartan_service.jobs import catalog
from spartan_service.jobs.safetensors_file import read_safetensors
from spartan_service.jobs.upload_store import StoredUpload
from spartan_service.jobs.uploads import UploadError
from spartan_service.zoo.builtins import BUILTINS

log = logging.getLogger(__name__)
Shape = tuple[int, ...]


def _call_factory(factory: Any, kwargs: dict[str, Any], input_shape: Shape,
                  num_classes: int, what: str) -> nn.Module:
    """Call with kwargs, adding input_shape / num_classes when the factory accepts them."""
    extra: dict[str, Any] = {}
    try:
        params = dict(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        params = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if "input_shape" in params or takes_any:
        extra["input_shape"] = tuple(input_shape)
    if "num_classes" in params or takes_any:
        extra["num_classes"] = num_classes
    unknown = [k for k in kwargs if params and k not in params and not takes_any]
    if unknown:
        raise ValueError(f"unknown kwargs for model '{what}': {', '.join(sorted(unknown))}; "
                         f"valid: {', '.join(p for p in params if p not in extra) or 'none'}")
    model = factory(**kwargs, **{k: v for k, v in extra.items() if k not in kwargs})
    if not isinstance(model, nn.Module):
        raise ValueError(f"model factory '{what}' returned {type(model).__name__}, "
                         "not a torch.nn.Module")
    return model


def build_model(arch: str, kwargs: dict[str, Any], input_shape: Shape | None,
                num_classes: int, task: str = "classification", text: bool = False,
                roots: list[Path] | None = None, pad_token_id: int | None = None) -> nn.Module:
    """Build a model for examples of `input_shape` and `num_classes` classes (for regression:
    outputs). `task`, `text`, `roots` and `pad_token_id` matter to 'hf:' models only.

    ValueError for an unknown arch, unknown or invalid kwargs, or a missing package.
    """
    catalog.check_model(arch)
    if catalog.is_hf(arch):
        from spartan_service.jobs.settings import get_settings
        from spartan_service.zoo import hf

        folder = hf.model_dir(arch[3:], get_settings().roots() if roots is None else roots)
        pretrained = catalog.model_kwargs(arch, kwargs)["pretrained"]
        return hf.load_model(folder, task, text, num_classes, pretrained, input_shape,
                             pad_token_id)
    if input_shape is None:
        raise ValueError(f"model '{arch}' needs array or image inputs; text needs an 'hf:' "
                         "model with its tokenizer")
    if arch in BUILTINS:
        return BUILTINS[arch](tuple(input_shape), num_classes,
                               **catalog.model_kwargs(arch, kwargs))
    source, sep, name = arch.partition(":")
    if sep:
        return _hub_model(source, name, kwargs, input_shape, num_classes)
    ep = next(e for e in entry_points(group=catalog.MODEL_GROUP) if e.name == arch)
    return _call_factory(ep.load(), kwargs, input_shape, num_classes, arch)


def _hub_model(source: str, name: str, kwargs: dict[str, Any], input_shape: Shape,
               num_classes: int) -> nn.Module:
    if "pretrained" in kwargs or "weights" in kwargs:
        raise ValueError("hub weights are not downloaded by workers; upload a .safetensors "
                         "file and give its id as model.weights")
    kw = {"num_classes": num_classes, **kwargs}
    if source == "timm":
        timm = import_module("timm")
        if len(input_shape) == 3:
            kw.setdefault("in_chans", input_shape[0])
        model = timm.create_model(name, pretrained=False, **kw)
    else:
        tv_models = import_module("torchvision.models")
        try:
            model = tv_models.get_model(name, weights=None, **kw)
        except KeyError:
            raise ValueError(f"unknown torchvision model '{name}'; valid: "
                             f"{', '.join(tv_models.list_models())}") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"'{source}:{name}' did not build a torch.nn.Module")
    return model


# safetensors dtypes as torch's (all little-endian, as the format and these machines are)
TORCH_DTYPES = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16,
    "U16": torch.uint16, "F16": torch.float16, "BF16": torch.bfloat16, "I32": torch.int32,
    "U32": torch.uint32, "F32": torch.float32, "I64": torch.int64, "U64": torch.uint64,
    "F64": torch.float64, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


def read_weights(upload: StoredUpload) -> dict[str, Tensor]:
    """An uploaded safetensors file's tensors, each read into its own buffer (the file is
    never held whole beside them)."""
    with upload.open() as f:
        return {name: torch.from_numpy(raw).view(TORCH_DTYPES[dtype]).reshape(shape)
                for name, dtype, shape, raw in read_safetensors(f, upload.size())}


def load_weights(model: nn.Module, source: Path | StoredUpload) -> None:
    """Load initial weights from a safetensors file (a path, or an upload): every name and
    shape must match the model's state_dict exactly (a clear ValueError lists the
    differences)."""
    try:
        tensors = load_file(str(source)) if isinstance(source, Path) else read_weights(source)
    except (SafetensorError, OSError, UploadError) as exc:
        raise ValueError(f"cannot read the weights file: {exc}") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(f"{k} {list(tensors[k].shape)} (model {list(v.shape)})"
                   for k, v in expected.items()
                   if k in tensors and tuple(tensors[k].shape) != tuple(v.shape))
    if missing or unexpected or wrong:
        parts = [f"{label}: {', '.join(items[:8])}{' ...' if len(items) > 8 else ''}"
                 for label, items in (("missing", missing), ("unexpected", unexpected),
                                      ("wrong shape", wrong)) if items]
        raise ValueError("initial weights do not match the model; " + "; ".join(parts))
    for key, value in expected.items():
        if not value.is_floating_point() and tensors[key].is_floating_point():
            raise ValueError(f"initial weights: {key} is {tensors[key].dtype}, "
                             f"the model holds {value.dtype}")
    model.load_state_dict(tensors, strict=True)
    log.info("loaded %d initial tensors", len(tensors))
