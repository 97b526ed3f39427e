"""Names, arguments and weight shapes of the built-in models and datasets, without torch.

The model zoo (spartan_service.zoo) and worker/data.py build them from the defaults here; the
API validates names and kwargs here so that a typo is refused at submit time with the valid
choices, and warns about layers a block does not divide before any training.
`weight_shapes` is the one owner of the built-ins' layer widths: the zoo's torch modules
are sized from it (tests/zoo/test_models.py checks the built modules against it).
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

BUILTIN_MODELS = ("mlp", "cnn", "resnet", "vit")
BUILTIN_DATASETS = ("digits", "mnist1d", "teacher", "upload")
# Read from storage and streamed (worker/data.py); their paths must lie under the data roots.
STORAGE_DATASETS = ("imagefolder", "hf", "npy", "fashion-mnist")
# Where Debian's dataset-fashion-mnist package puts the four idx files.
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                       "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
# Datasets whose labels are classes only (no regression targets).
CLASS_ONLY_DATASETS = ("digits", "mnist1d", "teacher", "imagefolder", "fashion-mnist")
MODEL_SOURCES = ("torchvision", "timm", "hf")
# The Python package each model source needs on the worker.
_SOURCE_PACKAGES = {"torchvision": "torchvision", "timm": "timm", "hf": "transformers"}
MODEL_GROUP = "spartan.models"
DATASET_GROUP = "spartan.datasets"

Shape = tuple[int, ...]
Check = Callable[[str, Any], None]


def _pos_int(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"'{key}' must be a positive integer, got {value!r}")


def _pos_ints(key: str, value: Any) -> None:
    if not isinstance(value, list) or not value:
        raise ValueError(f"'{key}' must be a non-empty list of positive integers, got {value!r}")
    for v in value:
        _pos_int(key, v)


def _opt_pos_int(key: str, value: Any) -> None:
    if value is not None:
        _pos_int(key, value)


def _opt_int(key: str, value: Any) -> None:
    if value is not None:
        _any_int(key, value)


def _path(key: str, value: Any) -> None:
    if not isinstance(value, str) or not value.strip() or "\x00" in value:
        raise ValueError(f"'{key}' must be a path (a non-empty string), got {value!r}")


def _opt_path(key: str, value: Any) -> None:
    if value is not None:
        _path(key, value)


def _name(key: str, value: Any) -> None:
    if not isinstance(value, str) or not value or len(value) > 200 or "\x00" in value:
        raise ValueError(f"'{key}' must be a name (a string of 1 to 200 characters), "
                         f"got {value!r}")


def _opt_name(key: str, value: Any) -> None:
    if value is not None:
        _name(key, value)


def _bool(key: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"'{key}' must be true or false, got {value!r}")


def _channels(key: str, value: Any) -> None:
    if value not in (1, 3) or isinstance(value, bool):
        raise ValueError(f"'{key}' must be 1 (grayscale) or 3 (RGB), got {value!r}")


def _any_int(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"'{key}' must be a non-negative integer, got {value!r}")


# kwarg -> (default, check). Defaults are small: the built-ins are for demos and tests.
MODEL_KWARGS: dict[str, dict[str, tuple[Any, Check]]] = {
    "mlp": {"hidden": ([256, 128], _pos_ints)},
    "cnn": {"channels": ([16, 32], _pos_ints), "kernel": (3, _pos_int)},
    # depth counts conv and linear layers as in He et al. (2016): 6n + 2 (8, 14, 20, ...).
    "resnet": {"width": (16, _pos_int), "depth": (8, _pos_int)},
    # patch None: 4 if that gives at least 8 tokens, else 2, else 1.
    "vit": {"dim": (64, _pos_int), "depth": (2, _pos_int), "heads": (4, _pos_int),
            "mlp_ratio": (2, _pos_int), "patch": (None, _opt_pos_int)},
}
DATASET_KWARGS: dict[str, dict[str, tuple[Any, Check]]] = {
    "digits": {},
    "mnist1d": {"num_samples": (2000, _pos_int), "length": (40, _pos_int),
                "seed": (42, _any_int)},
    "teacher": {"num_samples": (2000, _pos_int), "dim": (32, _pos_int),
                "classes": (10, _pos_int), "hidden": (64, _pos_int), "seed": (0, _any_int)},
    "upload": {},
    # Class subfolders of PNG / JPEG files; val_root: a named validation folder with the same
    # classes (else a seeded split). Images are resized to size x size, augmented in training
    # by a random crop from a crop_padding-padded copy and a horizontal flip.
    "imagefolder": {"root": (None, _path), "val_root": (None, _opt_path), "size": (32, _pos_int),
                    "channels": (3, _channels), "crop_padding": (4, _any_int),
                    "flip": (True, _bool)},
    # A datasets.save_to_disk directory, or parquet / CSV / JSON(L) files (a file, or a
    # directory of them); split / val_split name splits of a saved DatasetDict, val_path a
    # file or directory of validation files.
    "hf": {"path": (None, _path), "val_path": (None, _opt_path), "split": (None, _opt_name),
           "val_split": (None, _opt_name), "text_column": ("text", _name),
           "label_column": ("label", _name), "max_length": (128, _pos_int)},
    # Memory-mapped .npy arrays: x (examples first) and y (labels or targets); val_x / val_y a
    # named validation split. Float inputs are standardised per feature with statistics
    # streamed over the training split.
    "npy": {"x": (None, _path), "y": (None, _opt_path), "val_x": (None, _opt_path),
            "val_y": (None, _opt_path), "standardize": (True, _bool),
            "num_classes": (None, _opt_pos_int)},
    # Debian's dataset-fashion-mnist files (root: another folder holding the same files);
    # the validation split is the package's 10k test set. limit / val_limit: the first N.
    "fashion-mnist": {"root": (None, _opt_path), "limit": (None, _opt_pos_int),
                      "val_limit": (None, _opt_pos_int)},
}
# Kwargs that name files or folders: they must lie under SPARTAN_DATA_ROOTS.
PATH_KWARGS: dict[str, tuple[str, ...]] = {
    "imagefolder": ("root", "val_root"), "hf": ("path", "val_path"),
    "npy": ("x", "y", "val_x", "val_y"), "fashion-mnist": ("root",),
}
_REQUIRED: dict[str, tuple[str, ...]] = {"imagefolder": ("root",), "hf": ("path",),
                                         "npy": ("x",)}


def _plugins(group: str) -> list[str]:
    return sorted(ep.name for ep in entry_points(group=group))


def model_names() -> list[str]:
    return [*BUILTIN_MODELS, *_plugins(MODEL_GROUP)]


def dataset_names() -> list[str]:
    return [*BUILTIN_DATASETS, *STORAGE_DATASETS, *_plugins(DATASET_GROUP)]


def check_model(arch: str) -> None:
    """Raise ValueError naming the valid choices when arch is unknown."""
    prefix, sep, name = arch.partition(":")
    if sep:
        if prefix not in MODEL_SOURCES or not name.strip() or "\x00" in name:
            raise ValueError(f"unknown model source '{prefix}'; use 'torchvision:NAME', "
                             "'timm:NAME' or 'hf:NAME_OR_PATH'")
        package = _SOURCE_PACKAGES[prefix]
        if importlib.util.find_spec(package) is None:
            extra = " (pip install 'spartan-service[hf]')" if prefix == "hf" else ""
            raise ValueError(f"'{arch}' needs the '{package}' package, which is not "
                             f"installed{extra}")
        return
    if arch not in model_names():
        raise ValueError(f"unknown arch '{arch}'; valid: {', '.join(model_names())}")


def check_dataset(name: str) -> None:
    if name not in dataset_names():
        raise ValueError(f"unknown dataset '{name}'; valid: {', '.join(dataset_names())}")


def _resolve(table: dict[str, tuple[Any, Check]], what: str, kwargs: dict[str, Any]
             ) -> dict[str, Any]:
    unknown = sorted(set(kwargs) - set(table))
    if unknown:
        valid = ", ".join(table) or "none"
        raise ValueError(f"unknown kwargs for {what}: {', '.join(unknown)}; valid: {valid}")
    out = {key: kwargs.get(key, default) for key, (default, _) in table.items()}
    for key, (_, check) in table.items():
        if key in kwargs:
            check(key, kwargs[key])
    return out


def model_kwargs(arch: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """A built-in model's kwargs with defaults filled in; ValueError naming bad ones.

    Other archs (plugins, torchvision, timm) are passed through: their factory checks them.
    """
    if is_hf(arch):
        # pretrained: the weights in the model folder (else the config's fresh initialisation).
        return _resolve({"pretrained": (True, _bool)}, f"model '{arch}'", kwargs)
    if arch not in MODEL_KWARGS:
        return dict(kwargs)
    out = _resolve(MODEL_KWARGS[arch], f"model '{arch}'", kwargs)
    if arch == "resnet" and (out["depth"] < 8 or (out["depth"] - 2) % 6):
        raise ValueError(f"resnet 'depth' must be 6n + 2 with n >= 1 (8, 14, 20, ...), "
                         f"got {out['depth']}")
    if arch == "vit" and out["dim"] % out["heads"]:
        raise ValueError(f"vit 'dim' ({out['dim']}) must be divisible by 'heads' ({out['heads']})")
    return out


def dataset_kwargs(dataset: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """A built-in dataset's kwargs with defaults filled in; plugins' are passed through."""
    if dataset not in DATASET_KWARGS:
        return dict(kwargs)
    out = _resolve(DATASET_KWARGS[dataset], f"dataset '{dataset}'", kwargs)
    if dataset == "teacher" and out["classes"] < 2:
        raise ValueError("teacher 'classes' must be at least 2")
    if dataset == "mnist1d" and out["num_samples"] < 10:
        raise ValueError("mnist1d 'num_samples' must be at least 10 (one per class)")
    missing = [k for k in _REQUIRED.get(dataset, ()) if out[k] is None]
    if missing:
        raise ValueError(f"dataset '{dataset}' needs kwargs {', '.join(repr(k) for k in missing)}")
    if dataset == "npy":
        if out["y"] is None and out["val_y"] is not None:
            raise ValueError("npy 'val_y' needs 'y'")
        if out["y"] is not None and (out["val_x"] is None) != (out["val_y"] is None):
            raise ValueError("npy 'val_x' and 'val_y' go together (a named validation split)")
    if dataset == "hf" and out["val_path"] is not None and out["val_split"] is not None:
        raise ValueError("hf 'val_path' and 'val_split' both name the validation split; "
                         "give one")
    return out


def is_hf(arch: str) -> bool:
    return arch.startswith("hf:")


def text_data(dataset: str) -> bool:
    """Whether the dataset yields text (tokenised with the model's tokenizer)."""
    return dataset == "hf"


def dataset_shape(dataset: str, kwargs: dict[str, Any]) -> tuple[Shape, int] | None:
    """(input shape of one example, number of classes) of a built-in dataset; None when only
    the data can tell (uploads, plugins)."""
    if dataset == "digits":
        return (1, 8, 8), 10
    if dataset == "mnist1d":
        return (1, dataset_kwargs(dataset, kwargs)["length"]), 10
    if dataset == "teacher":
        kw = dataset_kwargs(dataset, kwargs)
        return (kw["dim"],), kw["classes"]
    if dataset == "fashion-mnist":
        return (1, 28, 28), 10
    return None


def as_image(input_shape: Shape) -> Shape:
    """(C, H, W) view of an example for the conv and ViT models: (D,) -> (1, 1, D),
    (C, L) -> (C, 1, L); a sequence is an image of height 1."""
    if len(input_shape) == 1:
        return (1, 1, input_shape[0])
    if len(input_shape) == 2:
        return (input_shape[0], 1, input_shape[1])
    if len(input_shape) == 3:
        return tuple(input_shape)
    raise ValueError(f"cnn, resnet and vit need inputs of 1 to 3 dims, got shape {input_shape}")


def vit_patch(hw: tuple[int, int], patch: int | None) -> tuple[int, int]:
    """Patch height and width for an H x W input (height 1 for sequences)."""
    h, w = hw
    if patch is None:
        for p in (4, 2, 1):
            ph = 1 if h == 1 else p
            if h % ph == 0 and w % p == 0 and (h // ph) * (w // p) >= 8:
                return ph, p
        return (1, 1)
    ph = 1 if h == 1 else patch
    if h % ph or w % patch:
        raise ValueError(f"vit 'patch' {patch} does not divide the input's {h}x{w}")
    return ph, patch


def weight_shapes(arch: str, kwargs: dict[str, Any], input_shape: Shape, num_classes: int
                  ) -> dict[str, Shape]:
    """Shapes of the default-maskable weights of a built-in model (Linear, Conv2d and attention
    projection weights), by parameter name, as spartan_service.zoo builds them."""
    kw = model_kwargs(arch, kwargs)
    shapes: dict[str, Shape] = {}
    if arch == "mlp":
        prev = math.prod(input_shape)
        for i, h in enumerate(kw["hidden"]):
            shapes[f"layers.{i}.weight"], prev = (h, prev), h
        shapes["head.weight"] = (num_classes, prev)
    elif arch == "cnn":
        c, h, _ = as_image(input_shape)
        k = kw["kernel"]
        for i, out in enumerate(kw["channels"]):
            shapes[f"convs.{i}.weight"], c = (out, c, 1 if h == 1 else k, k), out
        shapes["head.weight"] = (num_classes, c)
    elif arch == "resnet":
        c, h, _ = as_image(input_shape)
        kh, width, n = (1 if h == 1 else 3), kw["width"], (kw["depth"] - 2) // 6
        shapes["stem.weight"], c = (width, c, kh, 3), width
        for s, out in enumerate((width, 2 * width, 4 * width)):
            for b in range(n):
                name = f"stages.{s}.{b}"
                shapes[f"{name}.conv1.weight"] = (out, c, kh, 3)
                shapes[f"{name}.conv2.weight"] = (out, out, kh, 3)
                if c != out or (s > 0 and b == 0):
                    shapes[f"{name}.shortcut.0.weight"] = (out, c, 1, 1)
                c = out
        shapes["head.weight"] = (num_classes, c)
    elif arch == "vit":
        c, h, w = as_image(input_shape)
        ph, pw = vit_patch((h, w), kw["patch"])
        d, hidden = kw["dim"], kw["dim"] * kw["mlp_ratio"]
        shapes["patch_embed.weight"] = (d, c * ph * pw)
        for i in range(kw["depth"]):
            shapes[f"blocks.{i}.attn.in_proj_weight"] = (3 * d, d)
            shapes[f"blocks.{i}.attn.out_proj.weight"] = (d, d)
            shapes[f"blocks.{i}.mlp.0.weight"] = (hidden, d)
            shapes[f"blocks.{i}.mlp.2.weight"] = (d, hidden)
        shapes["head.weight"] = (num_classes, d)
    else:
        raise ValueError(f"'{arch}' is not a built-in model; its shapes are known once built")
    return shapes


# Parameters of 2+ dims that a prefix may name exactly although they are not masked by default.
_OTHER_2D = {"vit": ("cls_token", "pos_embed")}


def _under(name: str, prefix: str) -> bool:
    p = prefix.rstrip(".")
    return p == "" or name == p or name.startswith(p + ".")


def block_problems(
    arch: str,
    kwargs: dict[str, Any],
    dataset: str,
    block: tuple[int, int],
    prefixes: list[str] | None,
    data_kwargs: dict[str, Any] | None = None,
) -> list[str]:
    """Messages for maskable layers of a built-in model whose shape `block` does not divide
    (the Sparsifier uses 1x1 blocks for those), and for prefixes that select no weight.

    Empty when the shapes cannot be known before building the model (plugins, torchvision,
    timm, uploaded data) or the kwargs are invalid (that error is reported on its own).
    """
    r, c = block
    if arch not in MODEL_KWARGS:
        return []
    try:
        known = dataset_shape(dataset, data_kwargs or {})
        if known is None:
            return []
        shapes = weight_shapes(arch, kwargs, *known)
    except ValueError:
        return []
    problems: list[str] = []
    chosen = list(shapes)
    if prefixes is not None:
        chosen = [n for n in shapes if any(_under(n, p) for p in prefixes)]
        for p in prefixes:
            if not any(_under(n, p) for n in shapes) and p not in _OTHER_2D.get(arch, ()):
                problems.append(f"prefix '{p}' selects no maskable weight of '{arch}' "
                                f"(maskable: {', '.join(shapes)})")
    if (r, c) == (1, 1):
        return problems
    for name in chosen:
        shape = shapes[name]
        if shape[0] % r or shape[1] % c:
            problems.append(f"layer '{name}' of shape {list(shape)}: block {r}x{c} does not "
                            f"divide its first two dims; it uses 1x1 blocks")
    return problems
