"""The model registry: built-ins match the torch-free shapes of jobs.catalog (what submit-time
block warnings rely on), kwargs are checked, plugins and initial weights load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save, save_file
from torch import nn

from spartan.layout import maskable_weights
from spartan_service.jobs import catalog
from spartan_service.jobs.upload_store import StoredUpload, UploadStore
from spartan_service.zoo import build as models
from spartan_service.zoo import build_model, load_weights
from spartan_service.zoo.build import read_weights

CASES: list[tuple[str, dict[str, Any]]] = [
    ("mlp", {}), ("mlp", {"hidden": [7, 5, 3]}),
    ("cnn", {}), ("cnn", {"channels": [4, 6, 8], "kernel": 5}),
    ("resnet", {}), ("resnet", {"width": 4, "depth": 14}),
    ("vit", {}), ("vit", {"dim": 12, "depth": 1, "heads": 3, "mlp_ratio": 3, "patch": 2}),
]
INPUTS = [((1, 8, 8), 10), ((1, 40), 10), ((24,), 3), ((3, 4, 12), 5)]


@pytest.mark.parametrize(("arch", "kwargs"), CASES)
@pytest.mark.parametrize(("input_shape", "classes"), INPUTS)
def test_catalog_shapes_are_the_real_maskable_shapes(
    arch: str, kwargs: dict[str, Any], input_shape: tuple[int, ...], classes: int
) -> None:
    model = build_model(arch, kwargs, input_shape, classes)
    real = {n: tuple(p.shape) for n, p in maskable_weights(model).items()}
    assert real == catalog.weight_shapes(arch, kwargs, input_shape, classes)
    out = model(torch.randn(2, *input_shape))
    assert out.shape == (2, classes)


def test_block_problems_agree_with_the_block_grid() -> None:
    from spartan.layout import block_grid

    for arch, kwargs in CASES:
        model = build_model(arch, kwargs, (1, 40), 10)
        real = {n for n, p in maskable_weights(model).items()
                if block_grid(p.shape, (4, 4)) is None}
        named = {m.split("'")[1] for m in
                 catalog.block_problems(arch, kwargs, "mnist1d", (4, 4), None)}
        assert named == real, arch


def test_unknown_or_invalid_kwargs_are_named() -> None:
    with pytest.raises(ValueError, match="unknown kwargs for model 'mlp': depth; valid: hidden"):
        build_model("mlp", {"depth": 3}, (4,), 2)
    with pytest.raises(ValueError, match="6n \\+ 2"):
        build_model("resnet", {"depth": 9}, (1, 8, 8), 10)
    with pytest.raises(ValueError, match="unknown arch 'nope'"):
        build_model("nope", {}, (4,), 2)
    with pytest.raises(ValueError, match="1 to 3 dims"):
        build_model("cnn", {}, (1, 2, 3, 4), 2)


class FakeEntryPoint:
    def __init__(self, name: str, factory: Any) -> None:
        self.name, self._factory = name, factory

    def load(self) -> Any:
        return self._factory


def test_entry_point_factories(monkeypatch: pytest.MonkeyPatch) -> None:
    def tiny(width: int = 3, input_shape: tuple[int, ...] = (), num_classes: int = 0
             ) -> nn.Module:
        return nn.Linear(input_shape[0], num_classes * width)

    def not_a_module() -> object:
        return object()

    eps = [FakeEntryPoint("tiny", tiny), FakeEntryPoint("broken", not_a_module)]
    monkeypatch.setattr(catalog, "entry_points", lambda group: eps if group ==
                        catalog.MODEL_GROUP else [])
    monkeypatch.setattr(models, "entry_points", lambda group: eps)
    assert build_model("tiny", {"width": 2}, (5,), 3).weight.shape == (6, 5)
    with pytest.raises(ValueError, match="unknown kwargs for model 'tiny': depth; valid: width"):
        build_model("tiny", {"depth": 1}, (5,), 3)
    with pytest.raises(ValueError, match="returned object, not a torch.nn.Module"):
        build_model("broken", {}, (5,), 3)


def test_initial_weights_load_strictly(tmp_path: Path) -> None:
    source = build_model("mlp", {"hidden": [8]}, (4,), 3)
    path = tmp_path / "w.safetensors"
    save_file(source.state_dict(), str(path))
    target = build_model("mlp", {"hidden": [8]}, (4,), 3)
    load_weights(target, path)
    assert torch.equal(target.state_dict()["head.weight"], source.state_dict()["head.weight"])
    wrong = build_model("mlp", {"hidden": [9]}, (4,), 3)
    with pytest.raises(ValueError, match=r"wrong shape: head.weight \[3, 8\] \(model \[3, 9\]\)"):
        load_weights(wrong, path)
    other = build_model("mlp", {"hidden": [8, 8]}, (4,), 3)
    with pytest.raises(ValueError, match="missing: layers.1.bias, layers.1.weight"):
        load_weights(other, path)
    (tmp_path / "bad.safetensors").write_bytes(b"\x01\x00")
    with pytest.raises(ValueError, match="cannot read the weights file"):
        load_weights(target, tmp_path / "bad.safetensors")


def test_uploaded_weights_are_read_tensor_by_tensor(tmp_path: Path) -> None:
    """From the upload store (no path): every dtype torch keeps, bfloat16 included, bit for
    bit as the safetensors library reads them."""
    tensors = {"a": torch.randn(3, 4).to(torch.bfloat16), "b": torch.arange(5),
               "c": torch.randn(2, 2, dtype=torch.float16), "d": torch.tensor([True, False])}
    store = UploadStore(tmp_path)
    with store.writer("w") as w:
        w.write(save(tensors))
    got = read_weights(StoredUpload(store, "w", "safetensors"))
    for name, tensor in tensors.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor), name
    source = build_model("mlp", {"hidden": [8]}, (4,), 3)
    with store.writer("m") as w:
        w.write(save(source.state_dict()))
    target = build_model("mlp", {"hidden": [8]}, (4,), 3)
    load_weights(target, StoredUpload(store, "m", "safetensors"))
    assert all(torch.equal(v, target.state_dict()[k]) for k, v in source.state_dict().items())
    with store.writer("bad") as w:
        w.write(b"\x01\x00")
    with pytest.raises(ValueError, match="cannot read the weights file"):
        load_weights(target, StoredUpload(store, "bad", "safetensors"))


def test_hub_models_are_built_without_pretrained_downloads(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    import importlib.util
    import sys
    import types

    calls: list[dict[str, Any]] = []

    def get_model(name: str, **kwargs: Any) -> nn.Module:
        calls.append({"name": name, **kwargs})
        if name != "tinynet":
            raise KeyError(name)
        return nn.Linear(4, kwargs["num_classes"])

    fake = types.SimpleNamespace(get_model=get_model, list_models=lambda: ["tinynet"])
    monkeypatch.setitem(sys.modules, "torchvision.models", fake)  # type: ignore[arg-type]
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(catalog.importlib.util, "find_spec",
                        lambda name: object() if name == "torchvision" else real_find_spec(name))
    model = build_model("torchvision:tinynet", {}, (4,), 7)
    assert isinstance(model, nn.Linear) and model.out_features == 7
    assert calls == [{"name": "tinynet", "weights": None, "num_classes": 7}]
    with pytest.raises(ValueError, match="unknown torchvision model 'nope'; valid: tinynet"):
        build_model("torchvision:nope", {}, (4,), 7)
    with pytest.raises(ValueError, match="upload a .safetensors file"):
        build_model("torchvision:tinynet", {"pretrained": True}, (4,), 7)
