"""Torch-free names, kwargs and weight shapes of the built-ins (the torch side is checked
against these in tests/worker/test_models.py)."""

from __future__ import annotations

import pytest

from spartan_service.jobs import catalog


def test_kwargs_get_defaults_and_unknown_ones_are_named() -> None:
    assert catalog.model_kwargs("mlp", {}) == {"hidden": [256, 128]}
    assert catalog.model_kwargs("vit", {"dim": 32})["dim"] == 32
    assert catalog.model_kwargs("my-plugin", {"anything": 1}) == {"anything": 1}
    with pytest.raises(ValueError, match="unknown kwargs for model 'cnn': width; valid: "
                                         "channels, kernel"):
        catalog.model_kwargs("cnn", {"width": 3})
    with pytest.raises(ValueError, match="'kernel' must be a positive integer"):
        catalog.model_kwargs("cnn", {"kernel": True})
    with pytest.raises(ValueError, match="valid: none"):
        catalog.dataset_kwargs("digits", {"n": 3})


def test_dataset_shapes() -> None:
    assert catalog.dataset_shape("digits", {}) == ((1, 8, 8), 10)
    assert catalog.dataset_shape("mnist1d", {"length": 32}) == ((1, 32), 10)
    assert catalog.dataset_shape("teacher", {"dim": 5, "classes": 3}) == ((5,), 3)
    assert catalog.dataset_shape("upload", {}) is None


def test_weight_shapes_follow_input_and_kwargs() -> None:
    shapes = catalog.weight_shapes("mlp", {"hidden": [32]}, (1, 8, 8), 10)
    assert shapes == {"layers.0.weight": (32, 64), "head.weight": (10, 32)}
    cnn = catalog.weight_shapes("cnn", {"channels": [8]}, (1, 40), 10)
    assert cnn["convs.0.weight"] == (8, 1, 1, 3)  # a sequence is an image of height 1
    vit = catalog.weight_shapes("vit", {}, (1, 8, 8), 10)
    assert vit["patch_embed.weight"] == (64, 4)  # 2x2 patches: 16 tokens
    assert vit["blocks.0.attn.in_proj_weight"] == (192, 64)
    with pytest.raises(ValueError, match="does not divide"):
        catalog.weight_shapes("vit", {"patch": 3}, (1, 8, 8), 10)
    with pytest.raises(ValueError, match="not a built-in"):
        catalog.weight_shapes("torchvision:resnet18", {}, (3, 32, 32), 10)


def test_block_problems() -> None:
    problems = catalog.block_problems("resnet", {}, "digits", (2, 2), None)
    assert [p.split("'")[1] for p in problems] == ["stem.weight"]  # 1 input channel
    assert catalog.block_problems("resnet", {}, "digits", (2, 2), ["stages"]) == []
    assert catalog.block_problems("mlp", {}, "digits", (1, 1), None) == []
    missing = catalog.block_problems("mlp", {}, "digits", (1, 1), ["convs"])
    assert missing and "prefix 'convs' selects no maskable weight" in missing[0]
    assert catalog.block_problems("vit", {}, "digits", (1, 1), ["pos_embed"]) == []
    # Unknown before building: uploads, plugins; invalid kwargs are reported elsewhere.
    assert catalog.block_problems("mlp", {}, "upload", (4, 4), None) == []
    assert catalog.block_problems("plugin", {}, "digits", (4, 4), None) == []
    assert catalog.block_problems("mlp", {"bad": 1}, "digits", (4, 4), None) == []
