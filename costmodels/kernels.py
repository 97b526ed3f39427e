"""The inference kernels live in `spartan.kernels` (the deployable module uses them too); this
module re-exports them for the profiler and benchmarks."""

from spartan.kernels import (
    KERNELS,
    SparseConv2d,
    SparseLinear,
    apply_kernels,
    candidate_kernels,
    layer_module,
    matrix_block,
    replace_module,
)

__all__ = ["KERNELS", "SparseConv2d", "SparseLinear", "apply_kernels", "candidate_kernels",
           "layer_module", "matrix_block", "replace_module"]
