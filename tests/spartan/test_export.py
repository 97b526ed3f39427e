"""spartan.to_sparse / save_sparse / load_sparse: same outputs, no pickle, honest auto."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import nn

from spartan import Sparsifier, SparsifierConfig, load_sparse, to_sparse
from spartan.sparse_io import read_sparse
from spartan_service.zoo import build_model

MLP = {"arch": "mlp", "kwargs": {"hidden": [64, 64]}, "input_shape": [64], "num_classes": 16}
CNN = {"arch": "cnn", "kwargs": {"channels": [16, 32], "kernel": 3}, "input_shape": [1, 8, 8],
       "num_classes": 16}
VIT = {"arch": "vit", "kwargs": {"dim": 32, "depth": 1, "heads": 4, "mlp_ratio": 2, "patch": 4},
       "input_shape": [1, 8, 8], "num_classes": 16}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)


def _sparse(spec: dict, block: tuple[int, int], density: float = 0.25) -> nn.Module:
    """A built model pruned to `density` in blocks (exact zeros), as finalize() leaves it."""
    model = build_model(spec["arch"], spec["kwargs"], tuple(spec["input_shape"]),
                        spec["num_classes"])
    cfg = SparsifierConfig(method="imp", budget=density, block=block, allocation="uniform",
                           warmup_frac=0.0, finetune_frac=0.0)
    Sparsifier(model, cfg, total_steps=1).finalize()
    return model.eval()


def _x(spec: dict, n: int = 5) -> torch.Tensor:
    return torch.randn(n, *spec["input_shape"])


@pytest.mark.parametrize("spec", [MLP, CNN, VIT], ids=["mlp", "cnn", "vit"])
@pytest.mark.parametrize("block", [(1, 1), (4, 4), (16, 16)])
@pytest.mark.parametrize("kernel", ["csr", "bsr", "auto"])
def test_outputs_equal_dense_with_zeros(spec: dict, block: tuple[int, int], kernel: str) -> None:
    model, x = _sparse(spec, block), _x(spec)
    sparse = to_sparse(model, kernel, example=x, repeats=1)
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), model(x), rtol=1e-4, atol=1e-5)
    if kernel == "csr":  # every masked weight in the matrix formulation takes CSR
        assert set(sparse.kernels.values()) == {"csr"}
    if kernel == "bsr" and block == (16, 16) and spec is MLP:
        assert sparse.kernels["layers.1.weight"] == "bsr"
        assert sparse.plan["layers.1.weight"]["block"] == [16, 16]


@pytest.mark.parametrize("spec", [MLP, VIT], ids=["mlp", "vit"])
def test_round_trip_without_pickle(spec: dict, tmp_path: Path) -> None:
    model, x = _sparse(spec, (4, 4)), _x(spec)
    sparse = to_sparse(model, "csr", spec=spec)
    path = tmp_path / "model.sparse.safetensors"
    sparse.save(path)
    raw = path.read_bytes()  # safetensors: u64 header length, JSON header, raw tensor bytes
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} <= {"F32", "I64"}
    with safe_open(str(path), framework="pt") as f:
        meta, keys = f.metadata(), set(f.keys())
    assert json.loads(meta["model"]) == spec
    assert "layers.0.weight/values" in keys or "blocks.0.mlp.0.weight/values" in keys
    loaded = load_sparse(path, "cpu", build_model=build_model)
    assert loaded.kernels == sparse.kernels and loaded.spec == spec
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=1e-4, atol=1e-5)
    state, _, _ = read_sparse(path)
    for name, w in model.state_dict().items():
        assert torch.equal(state[name], w), name


def test_load_needs_an_architecture(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    to_sparse(_sparse(MLP, (1, 1)), "csr").save(path)  # no spec stored
    with pytest.raises(ValueError, match="build_model"):
        load_sparse(path, build_model=build_model)
    model = build_model("mlp", MLP["kwargs"], (64,), 16)
    assert set(load_sparse(path, model=model).kernels.values()) == {"csr"}


def test_load_refuses_other_files(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="not a spartan-sparse"):
        load_sparse(path, model=nn.Linear(2, 2))


def test_auto_never_picks_a_kernel_slower_than_dense() -> None:
    model = _sparse(MLP, (1, 1), density=0.05)
    sparse = to_sparse(model, "auto", example=_x(MLP, 64), repeats=3)
    for name, choice in sparse.plan.items():
        times = choice["latency_ms"]
        assert set(times) >= {"dense", "csr"}, name
        assert times[choice["kernel"]] <= times["dense"], name


def test_kernel_mapping_and_bad_names() -> None:
    model = _sparse(MLP, (1, 1))
    sparse = to_sparse(model, {"layers.0.weight": "csr"})
    assert sparse.kernels == {"layers.0.weight": "csr", "layers.1.weight": "dense",
                              "head.weight": "dense"}
    with pytest.raises(ValueError, match="no maskable weights"):
        to_sparse(model, {"nope.weight": "csr"})
    with pytest.raises(ValueError, match="unknown kernel"):
        to_sparse(model, "magic")


def test_semi_structured_stays_dense_without_a_capable_gpu() -> None:
    model = _sparse(MLP, (1, 1))
    if torch.cuda.is_available():
        pytest.skip("a GPU may have 2:4 kernels")
    assert set(to_sparse(model, "semi_structured").kernels.values()) == {"dense"}


def test_apply_kernels_leaves_attention_out_proj_alone() -> None:
    """nn.MultiheadAttention reads out_proj.weight directly, so its out_proj keeps its module;
    the Linear beside it runs the sparse kernel. Outputs equal the model's."""
    from spartan.kernels import apply_kernels

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.att = nn.MultiheadAttention(16, 2, batch_first=True)
            self.fc = nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.att(x, x, x)[0])

    torch.manual_seed(0)
    model = Block().eval()
    with torch.no_grad():
        model.fc.weight.mul_((torch.rand_like(model.fc.weight) > 0.8).float())
    fast = apply_kernels(model, {"att.out_proj": "csr", "fc": "csr"})
    assert isinstance(fast.att.out_proj, nn.Linear) and not isinstance(fast.fc, nn.Linear)
    x = torch.randn(3, 5, 16)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-5, atol=1e-6)
