"""Inference kernels for a (block-)sparse Linear, Conv2d or attention projection weight.

The profiler (costmodels) times layers through these modules and `spartan.to_sparse` builds
deployable models from them, so a cost model is fitted on the code path that ships.

- "dense": F.linear / F.conv2d with the masked weight (latency independent of nnz).
- "csr": torch's sparse CSR matmul (MKL on CPU, cuSPARSE on CUDA); y^T = W_csr @ x^T. A Conv2d
  becomes an im2col matmul: unfold the input to (C*kh*kw, N*L) columns, then W_csr @ columns.
- "bsr": the same with block-sparse rows (MKL on CPU takes square blocks only).
- "semi_structured" (alias "semi"): 2:4 sparsity (torch.sparse.to_sparse_semi_structured),
  Linear only, CUDA with compute capability >= 8.0, half precision; a weight that is not 2:4 is
  pruned further to 2 of every 4 inputs (what the profiler wants; to_sparse only picks it for
  weights that are 2:4 already).
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)

KERNELS = ("dense", "csr", "bsr", "semi_structured")
_ALIASES = {"semi": "semi_structured"}


def kernel_name(kernel: str) -> str:
    """Canonical kernel name; ValueError for an unknown one."""
    k = _ALIASES.get(kernel, kernel)
    if k not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; use one of {', '.join(KERNELS)}")
    return k


def _sparse_ok(weight: Tensor) -> bool:
    return weight.dtype in (torch.float32, torch.float64) or weight.is_cuda


def conv_matrix_ok(conv: nn.Conv2d) -> bool:
    """A conv the im2col formulation covers: one group, zero padding given as ints."""
    return conv.groups == 1 and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)


def semi_structured_ok(weight: Tensor) -> bool:
    """The device and shape admit torch's 2:4 kernel (CUDA, sm80+, dims multiples of 64)."""
    return (weight.is_cuda and weight.dim() == 2
            and torch.cuda.get_device_capability(weight.device) >= (8, 0)
            and weight.shape[0] % 64 == 0 and weight.shape[1] % 64 == 0)


def candidate_kernels(module: nn.Module, weight: Tensor, block: tuple[int, int]) -> list[str]:
    """Kernels that apply to this layer on its device (a trial run may still rule one out)."""
    out = ["dense"]
    linear = isinstance(module, (nn.Linear, nn.MultiheadAttention))
    if not (linear or (isinstance(module, nn.Conv2d) and conv_matrix_ok(module))):
        return out
    if _sparse_ok(weight):
        out.append("csr")
        r, c = matrix_block(weight, block)
        if block != (1, 1) and (weight.is_cuda or r == c):
            out.append("bsr")
    if linear and semi_structured_ok(weight):
        out.append("semi_structured")
    return out


def matrix_block(weight: Tensor, block: tuple[int, int]) -> tuple[int, int]:
    """A weight block as a block of the 2-D matrix the kernel multiplies (conv: R x C*kh*kw)."""
    k = weight[0, 0].numel() if weight.dim() > 2 else 1
    return block[0], block[1] * k


def square_block(matrix: Tensor, sizes: tuple[int, ...] = (32, 16, 8, 4, 2)) -> int:
    """Largest b in `sizes` such that the nonzeros of a 2-D matrix fill whole b x b blocks
    (1 when none does): the block a BSR layout can use without storing zeros."""
    nz = matrix != 0
    nnz = int(nz.sum())
    rows, cols = matrix.shape
    for b in sizes:
        if rows % b or cols % b:
            continue
        blocks = int(nz.reshape(rows // b, b, cols // b, b).any(3).any(1).sum())
        if blocks * b * b == nnz:
            return b
    return 1


def is_n_m(matrix: Tensor, n: int = 2, m: int = 4) -> bool:
    """Every run of m consecutive inputs of each row holds at most n nonzeros."""
    if matrix.dim() != 2 or matrix.shape[1] % m:
        return False
    return bool(((matrix != 0).reshape(matrix.shape[0], -1, m).sum(-1) <= n).all())


def _to_format(matrix: Tensor, kernel: str, block: tuple[int, int]) -> Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta state", once per process
        warnings.simplefilter("ignore", UserWarning)
        if kernel == "csr":
            return matrix.to_sparse_csr()
        if kernel == "bsr":
            return matrix.to_sparse_bsr(block)
    raise ValueError(f"unknown sparse format {kernel!r}")


def _two_four(w: Tensor) -> Tensor:
    """Keep the 2 largest |w| of every 4 consecutive inputs (the 2:4 pattern)."""
    g = w.reshape(w.shape[0], -1, 4)
    keep = torch.zeros_like(g, dtype=torch.bool).scatter_(-1, g.abs().topk(2, dim=-1).indices,
                                                          True)
    return (g * keep).reshape(w.shape)


def to_dense(w: Any) -> Tensor:
    """A kernel-format weight back as a strided tensor."""
    return w if isinstance(w, Tensor) and w.layout == torch.strided else w.to_dense()


class SparseLinear(nn.Module):
    """y = x W^T + b through one kernel; W is stored in that kernel's format.

    `names` are the weight's and bias's names in the dense model (what `weights()` returns).
    """

    def __init__(self, weight: Tensor, bias: Tensor | None, kernel: str,
                 block: tuple[int, int] = (1, 1), names: tuple[str, str] = ("weight", "bias")
                 ) -> None:
        super().__init__()
        kernel = kernel_name(kernel)
        self.kernel, self.block, self.names = kernel, block, names
        self.out_features, self.in_features = weight.shape
        self.dtype = weight.dtype
        w = weight.detach()
        b = None if bias is None else bias.detach()
        if kernel == "semi_structured":
            from torch.sparse import to_sparse_semi_structured

            half = w.dtype if w.dtype in (torch.float16, torch.bfloat16) else torch.float16
            w = to_sparse_semi_structured(_two_four(w.to(half)))
            b = None if b is None else b.to(half)
        elif kernel != "dense":
            w = _to_format(w, kernel, block)
            b = None if b is None else b.unsqueeze(1)  # (out, 1): added to W @ x^T by addmm
        self.w: Any = w
        self.b: Tensor | None = b

    def weights(self) -> dict[str, Tensor]:
        """The dense weight (exact zeros) and bias under their dense-model names."""
        out = {self.names[0]: to_dense(self.w).to(self.dtype)}
        if self.b is not None:
            out[self.names[1]] = (self.b if self.b.dim() == 1 else self.b[:, 0]).to(self.dtype)
        return out

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        if self.kernel == "dense":
            return F.linear(x, self.w, self.b)
        if self.kernel == "semi_structured":
            x2 = x.reshape(-1, self.in_features).to(self.w.dtype)
            y = F.linear(x2, self.w, self.b).to(x.dtype)
        else:
            xt = x.reshape(-1, self.in_features).t()  # (in, N)
            yt = self.w @ xt if self.b is None else torch.addmm(self.b, self.w, xt)
            y = yt.t()  # (N, out)
        return y.reshape(*lead, self.out_features)


class SparseConv2d(nn.Module):
    """A Conv2d through one kernel: dense conv2d, or im2col + sparse matmul."""

    def __init__(self, conv: nn.Conv2d, weight: Tensor, kernel: str,
                 block: tuple[int, int] = (1, 1), matrix: tuple[int, int] | None = None
                 ) -> None:
        """block: the weight block (a conv block spans its kernel); `matrix`, if given, the
        BSR block of the (O, C*kh*kw) matrix itself."""
        super().__init__()
        kernel = kernel_name(kernel)
        if kernel == "semi_structured":
            raise ValueError(f"kernel {kernel!r} does not apply to Conv2d")
        self.kernel, self.block = kernel, block
        self.stride, self.dilation, self.groups = conv.stride, conv.dilation, conv.groups
        self.padding: Any = conv.padding  # ints for the sparse path (checked), any for dense
        self.out_channels = weight.shape[0]
        self.shape = tuple(weight.shape)
        self.kernel_size = tuple(weight.shape[2:])
        w = weight.detach()
        b = None if conv.bias is None else conv.bias.detach()
        if kernel != "dense":
            if not conv_matrix_ok(conv):
                raise ValueError("sparse conv kernels need groups=1, zero padding given as ints")
            w = _to_format(w.reshape(w.shape[0], -1), kernel, matrix or matrix_block(w, block))
            b = None if b is None else b.unsqueeze(1)
        self.w: Any = w
        self.b: Tensor | None = b

    def weights(self) -> dict[str, Tensor]:
        out = {"weight": to_dense(self.w).reshape(self.shape)}
        if self.b is not None:
            out["bias"] = self.b if self.b.dim() == 1 else self.b[:, 0]
        return out

    def forward(self, x: Tensor) -> Tensor:
        if self.kernel == "dense":
            return F.conv2d(x, self.w, self.b, self.stride, self.padding, self.dilation,
                            self.groups)
        n, _, h, _ = x.shape
        pad, dil, stride = self.padding, self.dilation, self.stride
        cols = F.unfold(x, self.kernel_size, dil, pad, stride)  # (N, K, L)
        k, length = cols.shape[1], cols.shape[2]
        cols = cols.transpose(0, 1).reshape(k, n * length)  # (K, N*L)
        y = self.w @ cols if self.b is None else torch.addmm(self.b, self.w, cols)  # (O, N*L)
        ho = (h + 2 * pad[0] - dil[0] * (self.kernel_size[0] - 1) - 1) // stride[0] + 1
        wo = length // ho
        return y.reshape(self.out_channels, n, ho, wo).transpose(0, 1)


def layer_module(module: nn.Module, attr: str, weight: Tensor, kernel: str,
                 block: tuple[int, int]) -> nn.Module:
    """The inference module of one maskable weight (`module`.`attr`) holding `weight`."""
    if isinstance(module, nn.Conv2d):
        return SparseConv2d(module, weight, kernel, block)
    if isinstance(module, nn.Linear):
        return SparseLinear(weight, module.bias, kernel, block)
    if isinstance(module, nn.MultiheadAttention):
        # A projection timed as a plain Linear (its bias left out) on the attention's tokens.
        return SparseLinear(weight, None, kernel, block)
    raise ValueError(f"no inference kernel for {type(module).__name__}.{attr}")


def apply_kernels(model: nn.Module, kernels: Mapping[str, str],
                  blocks: Mapping[str, tuple[int, int]] | None = None) -> nn.Module:
    """A copy of `model` whose Linear / Conv2d modules named in `kernels` (module name ->
    kernel) run through that kernel with their current (masked) weights; for inference only."""
    out = copy.deepcopy(model).eval()
    for name, kernel in kernels.items():
        module = out.get_submodule(name)
        parent = out.get_submodule(name.rpartition(".")[0])
        # nn.MultiheadAttention reads out_proj.weight itself: its out_proj is never called.
        if not isinstance(module, (nn.Linear, nn.Conv2d)) or isinstance(
                parent, nn.MultiheadAttention):
            log.warning("%s (%s) keeps its own forward", name, type(module).__name__)
            continue
        block = (blocks or {}).get(name, (1, 1))
        replace_module(out, name, layer_module(module, "weight", module.weight, kernel, block))
    return out


def replace_module(root: nn.Module, name: str, new: nn.Module) -> None:
    """Put `new` where submodule `name` of `root` is."""
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)
