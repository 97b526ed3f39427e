"""Which weights are masked, and how a weight is cut into blocks.

A block covers R x C entries of a weight's first two dimensions (output x input features of a
Linear, output channels x input channels per group of a Conv2d) and the whole of its remaining
dimensions, so a conv block is R x C x kh x kw weights. Block values are sums of |w| over a
block; a block mask of shape `block_grid(shape, block)` expands back to the weight's shape.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

Block = tuple[int, int]


def plain_name(name: str) -> str:
    """`fc1.parametrizations.weight.original` -> `fc1.weight` (names as on the plain model)."""
    parts = name.split(".")
    if len(parts) >= 3 and parts[-1] == "original" and parts[-3] == "parametrizations":
        return ".".join(parts[:-3] + [parts[-2]])
    return name


def _named_params(model: nn.Module) -> dict[str, nn.Parameter]:
    return {plain_name(n): p for n, p in model.named_parameters()}


def _default_names(model: nn.Module) -> list[str]:
    names: list[str] = []
    for mname, mod in model.named_modules():
        prefix = f"{mname}." if mname else ""
        if isinstance(mod, (nn.Linear, nn.Conv2d)):
            names.append(prefix + "weight")
        elif isinstance(mod, nn.MultiheadAttention):
            # out_proj is an nn.Linear and is picked up on its own.
            if mod._qkv_same_embed_dim:
                names.append(prefix + "in_proj_weight")
            else:
                names += [prefix + f"{x}_proj_weight" for x in "qkv"]
    return names


def _under(name: str, prefix: str) -> bool:
    p = prefix.rstrip(".")
    return p == "" or name == p or name.startswith(p + ".")


def maskable_weights(
    model: nn.Module, prefixes: Iterable[str] | None = None
) -> dict[str, nn.Parameter]:
    """The weights a Sparsifier masks, keyed by full parameter name, in model order.

    Default: the weights of every nn.Linear, nn.Conv2d (grouped and depthwise included) and the
    projections of nn.MultiheadAttention. `prefixes` keeps only the default weights under the
    given module or parameter names and may also name any other parameter of 2+ dimensions
    exactly (e.g. an embedding table). Raises ValueError for a prefix that selects nothing.
    """
    params = _named_params(model)
    defaults = [n for n in _default_names(model) if n in params]
    if prefixes is None:
        chosen = set(defaults)
    else:
        prefixes = [prefixes] if isinstance(prefixes, str) else list(prefixes)
        chosen = set()
        for prefix in prefixes:
            hits = {n for n in defaults if _under(n, prefix)}
            if not hits and prefix in params:
                if params[prefix].dim() < 2:
                    raise ValueError(f"parameter {prefix!r} has fewer than 2 dims; cannot mask it")
                hits = {prefix}
            if not hits:
                raise ValueError(f"prefix {prefix!r} selects no maskable weight")
            chosen |= hits
    out = {n: p for n, p in params.items() if n in chosen}
    for name, p in out.items():
        if isinstance(p, nn.parameter.UninitializedParameter):
            raise ValueError(f"{name} is not initialised yet (lazy module); run a forward first")
    return out


def check_block(block: Iterable[int]) -> Block:
    """Validate a block shape: two positive ints."""
    b = tuple(block)
    if len(b) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in b):
        raise ValueError(f"block must be two positive ints, got {block!r}")
    return (b[0], b[1])


def block_grid(shape: Iterable[int], block: Iterable[int]) -> tuple[int, int] | None:
    """Number of blocks along a weight's first two dims, or None when the block does not divide."""
    shape = tuple(shape)
    r, c = check_block(block)
    if len(shape) < 2:
        raise ValueError(f"a masked weight needs 2+ dims, got shape {shape}")
    if shape[0] % r or shape[1] % c:
        return None
    return (shape[0] // r, shape[1] // c)


def block_numel(shape: Iterable[int], block: Iterable[int]) -> int:
    """Weights in one block: R x C x (product of the dims after the first two)."""
    shape = tuple(shape)
    r, c = check_block(block)
    return r * c * math.prod(shape[2:])


def _grid_or_raise(shape: tuple[int, ...], block: Block) -> tuple[int, int]:
    grid = block_grid(shape, block)
    if grid is None:
        raise ValueError(f"block {block} does not divide weight shape {shape}")
    return grid


def blocked(t: Tensor, block: Block) -> Tensor:
    """5-D view (G0, R, G1, C, K) of a weight-shaped tensor (a copy if t is not contiguous)."""
    shape = tuple(t.shape)
    g0, g1 = _grid_or_raise(shape, block)
    return t.reshape(g0, block[0], g1, block[1], math.prod(shape[2:]))


def per_block(x: Tensor) -> Tensor:
    """(G0, G1) block tensor -> (G0, 1, G1, 1, 1), broadcastable against `blocked(...)`."""
    return x.reshape(x.shape[0], 1, x.shape[1], 1, 1)


def block_sum(x: Tensor, block: Block, out: Tensor | None = None) -> Tensor:
    """Sum of a weight-shaped tensor over each block, shape block_grid(x.shape, block).

    Two plain reductions (over each row's contiguous C x K run, then over the R rows): several
    times faster on CPU than one reduction over the strided 5-D view.
    """
    shape = tuple(x.shape)
    g0, g1 = _grid_or_raise(shape, block)
    r, ck = block[0], block[1] * math.prod(shape[2:])
    rows = x.reshape(g0 * r * g1, ck)
    if r == 1:
        return torch.sum(rows, -1, out=None if out is None else out.view(-1))
    inner = rows.sum(-1, dtype=None if out is None else out.dtype).view(g0, r, g1)
    return torch.sum(inner, 1, out=None if out is None else out.view(g0, g1))


def block_values(weight: Tensor, block: Iterable[int]) -> Tensor:
    """Sum of |w| over each block, float32, shape block_grid(weight.shape, block)."""
    b = check_block(block)
    with torch.no_grad():
        return block_sum(weight.abs(), b).view(_grid_or_raise(tuple(weight.shape), b)).float()


def expand_blocks(mask: Tensor, shape: Iterable[int], block: Iterable[int]) -> Tensor:
    """Block mask of shape block_grid(shape, block) -> a tensor of the weight's shape."""
    shape, b = tuple(shape), check_block(block)
    grid = _grid_or_raise(shape, b)
    if tuple(mask.shape) != grid:
        raise ValueError(f"mask shape {tuple(mask.shape)} != block grid {grid}")
    full = (grid[0], b[0], grid[1], b[1], math.prod(shape[2:]))
    return per_block(mask).expand(full).reshape(shape)


def owner_of(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The module holding parameter `name` and the attribute it sits under."""
    mpath, _, attr = name.rpartition(".")
    module = model.get_submodule(mpath) if mpath else model
    return module, attr
