"""Kernels compute what dense layers compute; a quick real profile is valid and fits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from spartan.kernels import SparseConv2d, SparseLinear, apply_kernels
from spartan_service.costmodels import (
    fit_profile,
    load_profile,
    validate_profile,
    write_json_atomic,
)
from spartan_service.costmodels.profiler import profile_model


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(),
                         nn.Linear(64, 10))


def _masked(shape: tuple[int, ...], density: float = 0.3) -> torch.Tensor:
    return torch.randn(shape) * (torch.rand(shape[:2]) < density).reshape(
        *shape[:2], *[1] * (len(shape) - 2))


@pytest.mark.parametrize(("kernel", "block"), [("dense", (1, 1)), ("csr", (1, 1)),
                                               ("bsr", (4, 4))])
def test_sparse_linear_matches_dense(kernel: str, block: tuple[int, int]) -> None:
    w, b, x = _masked((32, 64)), torch.randn(32), torch.randn(5, 3, 64)
    out = SparseLinear(w, b, kernel, block)(x)
    torch.testing.assert_close(out, nn.functional.linear(x, w, b), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("kernel", "block"), [("csr", (1, 1)), ("bsr", (9, 1))])
@pytest.mark.parametrize("stride", [1, 2])
def test_sparse_conv_matches_dense(kernel: str, block: tuple[int, int], stride: int) -> None:
    conv = nn.Conv2d(6, 18, 3, stride=stride, padding=1)  # bsr: 9 x (1 x 3 x 3) matrix blocks
    w, x = _masked((18, 6, 3, 3)), torch.randn(2, 6, 9, 7)
    out = SparseConv2d(conv, w, kernel, block)(x)
    want = nn.functional.conv2d(x, w, conv.bias, stride, 1)
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-4)


def test_apply_kernels_keeps_outputs() -> None:
    model, x = _mlp(), torch.randn(4, 64)
    sparse = apply_kernels(model, {"0": "csr", "2": "dense", "4": "csr"})
    assert isinstance(sparse.get_submodule("0"), SparseLinear)
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), model(x), rtol=1e-4, atol=1e-4)


def test_quick_profile_of_small_mlp_is_valid_and_fits(tmp_path: Path) -> None:
    model = _mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prof = profile_model(model, torch.randn(16, 64), quick=True, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [lay["name"] for lay in prof["layers"]] == ["0", "2", "4"]
    assert prof["machine"]["threads"] == 1 and prof["machine"]["torch"] == torch.__version__
    for lay in prof["layers"]:
        assert lay["kernel"] in ("dense", "csr") and len(lay["samples"]) == 4
        assert lay["samples"][-1]["nnz_blocks"] == lay["shape"][0] * lay["shape"][1]
    path = write_json_atomic(tmp_path / "profile.json", prof)
    validate_profile(json.loads(path.read_text()))
    cm = fit_profile(load_profile(path))
    assert set(cm["layers"]) == {"0", "2", "4"} and cm["overhead"] >= 0
    for name, lay in cm["layers"].items():
        assert lay["slope"] >= 0 and lay["intercept"] > -0.01, name


def test_profile_one_kernel_blocks_and_conv() -> None:
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
                        nn.Linear(8 * 6 * 6, 16))
    prof = profile_model(cnn, torch.randn(2, 3, 6, 6), block=(4, 4), kernel="csr",
                         quick=True, progress=False)
    conv, fc = prof["layers"]
    assert conv["kernel"] == fc["kernel"] == "csr" and "alternatives" not in conv
    # 8x3 conv weight: 4x4 does not divide, so 1x1 blocks (the Sparsifier's fallback).
    assert conv["block"] == [1, 1] and fc["block"] == [4, 4]
    assert fc["samples"][-1]["nnz_blocks"] == 4 * 72


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"kernel": "magic"}, "unknown kernel"),
    ({"kernel": "bsr"}, "does not apply"),
    ({"densities": [0.5, 1.5]}, "densities"),
    ({"densities": [0.5, 1.0]}, "distinct densities"),
    ({"block": (0, 1)}, "block"),
])
def test_profile_refuses_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        profile_model(_mlp(), torch.randn(2, 64), quick=True, progress=False, **kwargs)


def test_profile_attention_projections() -> None:
    from .test_builtin_bridge import _SelfAttention

    prof = profile_model(_SelfAttention(), torch.randn(3, 5, 8), quick=True, progress=False)
    assert [(lay["name"], lay["shape"]) for lay in prof["layers"]] == [
        ("attn.in_proj_weight", [24, 8]), ("attn.out_proj", [8, 8])]
    assert set(fit_profile(prof)["layers"]) == {"attn.in_proj_weight", "attn.out_proj"}


def test_auto_with_blocks_tries_bsr_and_batch_resizes() -> None:
    prof = profile_model(_mlp(), torch.randn(3, 64), block=(4, 4), batch=7, quick=True,
                         progress=False)
    first = prof["layers"][0]
    tried = {first["kernel"], *first.get("alternatives", {})}
    assert tried == {"dense", "csr", "bsr"}
    assert prof["machine"]["batch"] == 7 and first["block"] == [4, 4]
    assert first["samples"][-1]["nnz_blocks"] == (128 // 4) * (64 // 4)
