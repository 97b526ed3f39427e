"""spartan.shrink: physically smaller, same outputs; saved and rebuilt without pickle."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from torch import Tensor, nn

from spartan import Sparsifier, SparsifierConfig, load_sparse, save_shrunk, shrink
from spartan.export import SparseModel
from spartan.sparse_io import save_sparse
from spartan_service.jobs import catalog
from spartan_service.zoo import build as models
from spartan_service.zoo import build_model
from tests.spartan.channel_models import ConcatNet, GroupedNet, TinyDecoder

SPECS = {
    "mlp": {"arch": "mlp", "kwargs": {"hidden": [32, 24]}, "input_shape": [12],
            "num_classes": 4},
    "cnn": {"arch": "cnn", "kwargs": {"channels": [8, 16], "kernel": 3},
            "input_shape": [1, 8, 8], "num_classes": 4},
    "resnet": {"arch": "resnet", "kwargs": {"width": 4, "depth": 8}, "input_shape": [3, 8, 8],
               "num_classes": 4},
    "vit": {"arch": "vit", "kwargs": {"dim": 16, "depth": 2, "heads": 4, "mlp_ratio": 2,
                                      "patch": 4}, "input_shape": [1, 8, 8], "num_classes": 4},
}


class CnnBn(nn.Module):
    """A user model, built through an entry point: conv + BatchNorm + ReLU, then Linear."""

    def __init__(self, input_shape: tuple[int, ...] = (3, 8, 8), num_classes: int = 4,
                 width: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(input_shape[0], width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU())
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 16, 32), nn.ReLU(),
                                        nn.Linear(32, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class FakeEntryPoint:
    def __init__(self, name: str, factory: Any) -> None:
        self.name, self._factory = name, factory

    def load(self) -> Any:
        return self._factory


@pytest.fixture
def entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    eps = [FakeEntryPoint("cnnbn", CnnBn)]
    monkeypatch.setattr(catalog, "entry_points", lambda group: eps if group ==
                        catalog.MODEL_GROUP else [])
    monkeypatch.setattr(models, "entry_points", lambda group: eps)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)  # 2 shared cores: more threads only contend


def _built(name: str) -> tuple[nn.Module, Tensor]:
    spec = SPECS[name]
    model = build_model(spec["arch"], spec["kwargs"], tuple(spec["input_shape"]),
                        spec["num_classes"])
    return model, torch.randn(6, *spec["input_shape"])


def _pruned(model: nn.Module, x: Tensor, method: str = "spartan", allocation: str = "global"
            ) -> tuple[nn.Module, Tensor]:
    """Train a few steps to 40% of the parameters; the masked model's eval outputs."""
    config = SparsifierConfig(method=method, structure="channels", budget=0.4,
                              warmup_frac=0.5, finetune_frac=0.2, min_keep=0.1,
                              allocation=allocation)
    s = Sparsifier(model, config, 6, example_inputs=x)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(6):
        loss = model(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        s.step()
    model.eval()
    with torch.no_grad():
        masked = model(x)
    s.finalize()
    return model, masked


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _check(model: nn.Module, masked: Tensor, x: Tensor) -> nn.Module:
    small = shrink(model, x).eval()
    with torch.no_grad():
        out = small(x)
    scale = masked.abs().max()
    assert float((out - masked).abs().max() / scale) <= 1e-5
    assert _params(small) < 0.75 * _params(model)
    return small


@pytest.mark.parametrize("name", list(SPECS))
def test_builtins_shrink_to_the_masked_outputs(name: str) -> None:
    model, x = _built(name)
    model, masked = _pruned(model, x)
    _check(model, masked, x)


@pytest.mark.parametrize("make,x", [
    (GroupedNet, torch.randn(4, 3, 6, 6)), (ConcatNet, torch.randn(4, 3, 6, 6)),
    (TinyDecoder, torch.randn(4, 5, 6))], ids=["grouped-depthwise", "concat", "hf-attention"])
@pytest.mark.parametrize("method", ["spartan", "imp"])
def test_couplings_shrink_to_the_masked_outputs(make: Callable[[], nn.Module], x: Tensor,
                                                method: str) -> None:
    model, masked = _pruned(make(), x, method)
    small = shrink(model, x).eval()
    with torch.no_grad():
        out = small(x)
    assert float((out - masked).abs().max() / masked.abs().max()) <= 1e-5
    assert _params(small) < _params(model)


def test_vit_loses_heads() -> None:
    model, x = _built("vit")
    model, masked = _pruned(model, x)
    small = _check(model, masked, x)
    heads = [m.num_heads for m in small.modules() if hasattr(m, "q_proj")]
    assert heads and min(heads) < 4


def test_entry_point_model_round_trip(entry_point: None, tmp_path: Path) -> None:
    spec = {"arch": "cnnbn", "kwargs": {"width": 8}, "input_shape": [3, 8, 8],
            "num_classes": 4}
    model = build_model("cnnbn", {"width": 8}, (3, 8, 8), 4)
    x = torch.randn(5, 3, 8, 8)
    model, masked = _pruned(model, x)
    small = _check(model, masked, x)
    path = tmp_path / "model.sparse.safetensors"
    save_shrunk(small, path, spec)
    loaded = load_sparse(path, build_model=build_model)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), small(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["resnet", "vit"])
def test_saved_without_pickle_and_rebuilt(name: str, tmp_path: Path) -> None:
    model, x = _built(name)
    model, _ = _pruned(model, x)
    small = shrink(model, x).eval()
    path = tmp_path / "model.sparse.safetensors"
    save_sparse(SparseModel(small, {}, SPECS[name]), path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    assert meta["format"] == "spartan-shrunk/1"
    assert json.loads(meta["model"]) == SPECS[name]
    assert shapes == {k: tuple(v.shape) for k, v in small.state_dict().items()}
    loaded = load_sparse(path, build_model=build_model)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), small(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="needs model= or build_model="):
        load_sparse(path)


def test_a_plain_model_with_zero_columns_shrinks() -> None:
    model, x = _built("mlp")
    with torch.no_grad():
        model.layers[1].weight[:, :20] = 0.0  # hidden units 0-19 of layers.0 are never read
        ref = model(x)
    small = shrink(model, x)
    assert small.layers[0].out_features == 12 and small.layers[1].in_features == 12
    with torch.no_grad():
        torch.testing.assert_close(small(x), ref, rtol=1e-5, atol=1e-6)


class FlatNet(nn.Module):
    """Linear layers on flattened conv maps: channels first (flatten) and channels last
    (permute + reshape), so a channel spans 16 consecutive, or every 5th, features."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 5, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(6 * 16, 8), nn.Linear(5 * 16, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        a = torch.relu(self.bn(self.conv(x)))
        b = torch.relu(self.conv2(a))
        h = self.fc1(a.flatten(1)) + self.fc2(b.permute(0, 2, 3, 1).reshape(x.shape[0], -1))
        return self.head(torch.relu(h))


def test_linear_after_flatten_reads_whole_channels() -> None:
    from spartan.channels import trace_channels

    model, x = FlatNet(), torch.randn(4, 3, 4, 4)
    graph = trace_channels(model, x)
    conv, conv2 = graph.layers["conv"].out_items, graph.layers["conv2"].out_items
    assert bool((conv >= 0).all()) and bool((conv2 >= 0).all())  # no longer pinned
    assert torch.equal(graph.layers["fc1"].in_items, conv.repeat_interleave(16))
    assert torch.equal(graph.layers["fc2"].in_items, conv2.repeat(16))
    model, masked = _pruned(model, x, allocation="uniform")  # every layer group loses some
    small = _check(model, masked, x)
    assert small.fc1.in_features == 16 * small.conv.out_channels < 6 * 16
    assert small.fc2.in_features == 16 * small.conv2.out_channels < 5 * 16


class Conv1dNet(nn.Module):
    """A 1-d CNN (sequences, audio): Conv1d + BatchNorm1d, a depthwise Conv1d, pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv1d(2, 8, 5, padding=2), nn.BatchNorm1d(8)
        self.dw = nn.Conv1d(8, 8, 3, padding=1, groups=8)
        self.conv2 = nn.Conv1d(8, 12, 3, padding=1)
        self.head = nn.Linear(12, 3)

    def forward(self, x: Tensor) -> Tensor:
        a = nn.functional.max_pool1d(torch.relu(self.bn(self.conv(x))), 2)
        b = torch.relu(self.conv2(torch.relu(self.dw(a))))
        return self.head(nn.functional.adaptive_avg_pool1d(b, 1).flatten(1))


@pytest.mark.parametrize("method", ["spartan", "imp"])
def test_conv1d_shrinks_to_the_masked_outputs(method: str) -> None:
    from spartan.channels import trace_channels

    model, x = Conv1dNet(), torch.randn(4, 2, 16)
    graph = trace_channels(model, x)
    assert {"conv", "dw", "conv2", "head"} <= set(graph.layers)
    assert torch.equal(graph.layers["dw"].out_items, graph.layers["conv"].out_items)  # coupled
    model, masked = _pruned(model, x, method, allocation="uniform")
    small = _check(model, masked, x)
    assert isinstance(small.conv, nn.Conv1d) and small.conv.out_channels < 8
    assert small.dw.groups == small.dw.in_channels == small.conv.out_channels
    assert small.conv2.out_channels < 12


class UpNet(nn.Module):
    """A small encoder-decoder: strided conv down, ConvTranspose2d (with BatchNorm) back up,
    a 1x1 conv head; the transposed conv's weight is (in, out, kH, kW)."""

    def __init__(self) -> None:
        super().__init__()
        self.down, self.bn = nn.Conv2d(2, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8)
        self.up = nn.ConvTranspose2d(8, 6, 3, stride=2, padding=1, output_padding=1)
        self.bn2, self.head = nn.BatchNorm2d(6), nn.Conv2d(6, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.bn(self.down(x)))
        return self.head(torch.relu(self.bn2(self.up(h))))


@pytest.mark.parametrize("method", ["spartan", "imp"])
def test_transposed_conv_shrinks_to_the_masked_outputs(method: str) -> None:
    from spartan.channels import trace_channels

    model, x = UpNet(), torch.randn(4, 2, 8, 8)
    graph = trace_channels(model, x)
    assert bool((graph.layers["up"].in_items >= 0).all())
    assert bool((graph.layers["up"].out_items >= 0).all())
    model, masked = _pruned(model, x, method, allocation="uniform")
    small = _check(model, masked, x)
    assert isinstance(small.up, nn.ConvTranspose2d) and small.up.output_padding == (1, 1)
    assert small.up.in_channels == small.down.out_channels < 8
    assert small.up.out_channels == small.head.in_channels < 6


@pytest.mark.parametrize("method", ["spartan", "imp"])
def test_grouped_query_heads_go_by_group(method: str) -> None:
    from spartan.channels import trace_channels

    model, x = TinyDecoder(dim=32, heads=8, kv_heads=2), torch.randn(4, 5, 6)
    heads = trace_channels(model, x).layers["attn"].out_items
    assert heads.numel() == 8 and len(set(heads.tolist())) == 2  # 4 q heads per k / v head
    assert len(set(heads[:4].tolist())) == len(set(heads[4:].tolist())) == 1
    model, masked = _pruned(model, x, method, allocation="uniform")
    small = shrink(model, x).eval()
    with torch.no_grad():
        out = small(x)
    assert float((out - masked).abs().max() / masked.abs().max()) <= 1e-5
    attn = small.attn
    assert attn.q_proj.out_features == 4 * attn.k_proj.out_features == 4 * 4  # one group left
    assert attn.num_heads == 4 and attn.num_key_value_heads == 1


def test_shrunk_attention_with_kv_groups_is_grouped_query_attention() -> None:
    from spartan.shrink import ShrunkAttention
    from tests.spartan.channel_models import HFAttention

    torch.manual_seed(0)
    ref = HFAttention(16, 4, kv_heads=2).eval()
    mine = ShrunkAttention(16, 4, 4, batch_first=True, kv_heads=2).eval()
    for a, b in (("q_proj", "q_proj"), ("k_proj", "k_proj"), ("v_proj", "v_proj"),
                 ("o_proj", "out_proj")):
        getattr(mine, b).load_state_dict(getattr(ref, a).state_dict())
    x = torch.randn(3, 5, 16)
    assert mine.k_proj.out_features == 8
    torch.testing.assert_close(mine(x, x, x)[0], ref(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="kv groups"):
        ShrunkAttention(16, 4, 4, kv_heads=3)
