"""The Sparsifier's step on CPU in a few fused passes (spartan/_native.c), from last step's state.

A step of the torch path runs ~20 tensor operations over the group: a sampled bracket and an
exact pass for the hard threshold, a Newton solve from scratch-ish, then the buffers. Here:
- one scan collects the items near last step's hard threshold (a bracket of adaptive width)
  and sums the first-order change of sum c m since the last step;
- the hard threshold is a weighted quickselect among the collected items (exact: the scan also
  counts the cost above the bracket, and a bracket that misses falls back to `hard_threshold`);
- tau starts from the first-order prediction, and each Newton evaluation is one pass that also
  writes the values, m and the forward weights, so the last evaluation leaves the step done;
  the hard mask h itself is made only when asked for (`hard_mask`);
- the backward reads G twice (lam, then dL/dw), computing m (1 - m) from m on the fly.
Same masks and gradients as the torch path (tested); float32 weights on CPU, masks per weight,
per conv kernel or per block (blocks that tile the weight), methods spartan and dual_averaging,
in a budget group whose every layer qualifies; anything else (N:M, IMP, float64, CUDA) takes the
torch path.
"""

from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from spartan import _native
from spartan._chunked import split_scalar
from spartan.topk import TOL, hard_threshold, newton

if TYPE_CHECKING:
    from spartan.masking import Group, MaskedLayer

_METHODS = ("spartan", "dual_averaging")
_MIN_BAND, _MAX_BAND = 64, 4096  # items the bracket should hold


@dataclass(eq=False)
class FastState:
    """What a fused step starts from: last step's hard threshold and soft-mask root."""

    offsets: Tensor  # int64, the layers' starts in the flat buffers, then n
    geom: Tensor  # int64 (layers, 4): where each layer's items lie (see _geometry)
    weights: int  # weights in the group (the passes' thread count follows it)
    t: float = math.nan  # ratio of the first dropped item (knapsack order)
    lim: int = -1  # its index: items at ratio t below it are kept
    delta: float = math.nan  # half-width of the bracket around t
    u: float = math.nan  # beta tau of the soft mask
    beta: float = math.nan
    f: float = math.nan  # sum c m at u
    s: float = math.nan  # sum c m (1 - m) at u
    d0: float = math.nan  # sum c m (1 - m) x at u
    c_total: float = math.nan  # sum of the solver costs
    lib: ctypes.CDLL | None = None  # the library that made the buffers in use
    cand: Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.uint8))
    cnt: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))

    def slots(self, n: int, threads: int) -> int:
        """Candidate slots per thread (buffers sized on first use or a thread-count change)."""
        cap = max(2 * _MAX_BAND, n // 16) // threads
        if self.cnt.numel() != threads or self.cand.numel() != threads * cap * _native.CAND_BYTES:
            self.cand = torch.empty(threads * cap * _native.CAND_BYTES, dtype=torch.uint8)
            self.cnt = torch.zeros(threads, dtype=torch.int64)
        return cap


def _geometry(lay: MaskedLayer) -> tuple[int, int, int, int] | None:
    """(rows, width, per_row, stride) of the layer's items, as the C passes read them (geom_t
    in spartan/_native.c): the weight as a matrix out x (in kh kw), an item a tile of R rows by
    C kh kw floats. None when the blocks do not tile the weight exactly."""
    n = lay.grid[0] * lay.grid[1]
    if lay.elementwise:
        return (1, 1, n, n)
    shape = tuple(lay.param.shape)
    (rows, cols), k = lay.block, math.prod(shape[2:])
    if len(shape) < 2 or lay.grid != (shape[0] // rows, shape[1] // cols) \
            or shape[0] % rows or shape[1] % cols:
        return None
    return (rows, cols * k, lay.grid[1], shape[1] * k)


def eligible(g: Group, method: str) -> bool:
    if method not in _METHODS or g.nm or _native.library() is None:
        return False
    c = g.solver_costs
    if c is not None and not (c.dtype == torch.float32 and c.is_contiguous()):
        return False
    return all(_geometry(lay) is not None and lay.param.dtype == torch.float32
               and lay.param.is_contiguous() and lay.param.device.type == "cpu"
               for lay in g.layers)


def _new_state(g: Group) -> FastState:
    return FastState(torch.tensor([*[lay.start for lay in g.layers], g.n]),
                     torch.tensor([_geometry(lay) for lay in g.layers], dtype=torch.int64),
                     sum(lay.param.numel() for lay in g.layers))


def seed(g: Group, method: str) -> None:
    """Keep (or drop) the fused path's state after a torch-path update of g."""
    if not eligible(g, method):
        g.fast = None
        return
    starts = [lay.start for lay in g.layers]
    if starts != sorted(starts) or [lay.stop for lay in g.layers] != [*starts[1:], g.n]:
        g.fast = None
        return
    st = g.fast if g.fast is not None else _new_state(g)
    _move(st, *_first_dropped(g, g.h), hit=False)
    if g.mode == "soft" and isinstance(g.tau, float) and g.s is not None and g.m is not None:
        st.u, st.beta, st.s = g.beta * g.tau, g.beta, float(g.s)
        st.f = float(g.m.sum()) if g.unit else float(torch.dot(g.m, g.c))
        st.d0 = float(torch.dot(g.m * (1 - g.m), g.v))  # c m (1 - m) x with x = v / c
        st.c_total = float(g.n) if g.unit else float(g.c.sum(dtype=torch.float64))
    else:
        st.u = st.beta = st.f = st.s = st.d0 = math.nan
    g.fast = st


def hard_mask(g: Group) -> Tensor:
    """The hard mask of the fused path's last step: x > t, and x == t below index lim."""
    st = g.fast
    assert st is not None
    x = g.v if g.unit else g.v / g.c
    h = x > st.t
    tied = torch.nonzero(x[:st.lim] == st.t).squeeze(1)
    h[tied] = True
    return h


def _first_dropped(g: Group, h: Tensor) -> tuple[float, int]:
    """(t, lim) of a hard mask: the ratio and index of its first dropped item in knapsack order
    (ratio descending, index ascending), which h keeps everything before."""
    x = g.v if g.unit else g.v / g.c
    dropped = torch.where(h, torch.tensor(-math.inf), x)
    t = float(dropped.max())
    return t, int(torch.nonzero(dropped == t)[0, 0])


def _move(st: FastState, t: float, lim: int, hit: bool, count: int = 0,
          overflow: bool = False) -> None:
    """New threshold; the bracket follows its movement and holds a few thousand items."""
    shift = abs(t - st.t) if math.isfinite(st.t) else 0.0
    if not math.isfinite(st.delta):
        st.delta = max(abs(t) * 1e-3, 1e-30)
    elif overflow:
        st.delta = max(st.delta / 8, 4 * shift)
    elif not hit:
        st.delta = 4 * max(st.delta, shift)
    else:
        rho = max(count, 1) / (2 * st.delta)  # items per unit of ratio near t
        st.delta = min(max(4 * shift, _MIN_BAND / rho), _MAX_BAND / rho)
    st.t, st.lim = t, lim


def _group_view(g: Group, m: Tensor) -> tuple[_native.GroupView, list[object]]:
    st = g.fast
    assert st is not None
    weffs = []
    for lay in g.layers:
        if lay.weff is None or lay.weff.shape != lay.param.shape:
            lay.weff = torch.empty_like(lay.param, memory_format=torch.contiguous_format)
        weffs.append(lay.weff)
    return _native.view(st.offsets, st.geom, [lay.param for lay in g.layers], weffs,
                        g.solver_costs, g.v, m, _native.threads(st.weights))


def update(g: Group, method: str, budget: float, beta_eff: float, scale_mean: bool) -> bool:
    """The step's masks by the fused passes; False (nothing changed) if they do not apply."""
    st, lib = g.fast, _native.library()
    if st is None or lib is None or not eligible(g, method):
        return False
    if method == "spartan" and (g.m is None or not math.isfinite(st.u)):
        return False
    threads = _native.threads(st.weights)
    cap = st.slots(g.n, threads)
    view, keep = _group_view(g, g.m if method == "spartan" and g.m is not None else g.v)
    res = torch.empty(5, dtype=torch.float64)
    lib.sp_scan(ctypes.byref(view), st.t - st.delta, st.t + st.delta, st.cand.data_ptr(), cap,
                st.cnt.data_ptr(), res.data_ptr())
    sum_v, above, band, overflow, d1 = res.tolist()
    if not math.isfinite(sum_v):
        raise ValueError("values (and values / costs * beta) must be finite")
    if overflow == 0 and above <= budget < above + band:
        lib.sp_cut(st.cand.data_ptr(), cap, st.cnt.data_ptr(), threads, budget - above,
                   res.data_ptr())
        _move(st, res[0].item(), int(res[1].item()), True, int(st.cnt.sum()))
    else:
        g.settle_h()
        lib.sp_values(ctypes.byref(view))  # as the passes sum them (torch may round otherwise)
        h = hard_threshold(g.v, g.solver_costs, budget)
        _move(st, *_first_dropped(g, h), hit=False, overflow=overflow > 0)
    if method == "spartan":
        _soft(g, lib, view, budget, beta_eff, scale_mean, sum_v, d1)
    else:
        lib.sp_hard(ctypes.byref(view), st.t, st.lim)
        g.mode = "ste"
    del keep
    g.stale, g.fast_mode, st.lib = True, True, lib
    return True


def _soft(g: Group, lib: ctypes.CDLL, view: _native.GroupView, budget: float, beta_eff: float,
          scale_mean: bool, sum_v: float, d1: float) -> None:
    st = g.fast
    assert st is not None
    if scale_mean:  # as Group.update: beta over the cost-weighted mean of v / c
        mean = sum_v / st.c_total
        beta = beta_eff / mean if mean > 0 else beta_eff
    else:
        beta = beta_eff / g.c0
    u0 = beta * st.u / st.beta
    if st.s > 0 and math.isfinite(d1) and math.isfinite(st.d0):  # first-order prediction
        guess = st.u + (st.f + beta * d1 - st.beta * st.d0 - budget) / st.s
        if math.isfinite(guess):
            u0 = guess
    res = torch.empty(5, dtype=torch.float64)
    last: list[float] = []

    def evaluate(u: float, probe: bool) -> list[float]:
        u1, u2 = split_scalar(u, torch.float32)
        lib.sp_soft(ctypes.byref(view), beta, u1, u2, st.t, st.lim, res.data_ptr())
        last[:] = res.tolist()
        return last[:4]

    u = newton(evaluate, budget, g.solver_budget(1.0), u0, TOL[torch.float32])
    st.u, st.beta, st.f, st.s, st.d0 = u, beta, last[0], last[1], last[4]
    g.tau, g.beta, g.mode = u / beta, beta, "soft"
    g.s = torch.tensor(max(last[1], 1e-30))


def rebuild(g: Group) -> bool:
    """Forward buffers from the current weights at last step's thresholds (soft or ste mode):
    the same kernel as the step, so a resumed run continues bit for bit. h follows the weights
    through the threshold (the torch path keeps h as it was)."""
    st, lib = g.fast, _native.library()
    method = {"soft": "spartan", "ste": "dual_averaging"}.get(g.mode)
    if st is None or lib is None or method is None or not math.isfinite(st.t) \
            or not eligible(g, method):
        return False
    if g.mode == "soft" and not math.isfinite(st.u):
        return False
    if g.mode == "soft" and g.m is None:
        g.m = torch.empty_like(g.v)
    view, keep = _group_view(g, g.m if g.m is not None else g.v)
    if g.mode == "soft":
        res = torch.empty(5, dtype=torch.float64)
        u1, u2 = split_scalar(st.u, torch.float32)
        lib.sp_soft(ctypes.byref(view), st.beta, u1, u2, st.t, st.lim, res.data_ptr())
        st.f, st.s, _, _, st.d0 = res.tolist()
        g.s = torch.tensor(max(st.s, 1e-30))
    else:
        lib.sp_hard(ctypes.byref(view), st.t, st.lim)
    del keep
    g.stale, g.fast_mode, st.lib = True, True, lib
    return True


SAVED = ("t", "lim", "delta", "u", "beta", "f", "s", "d0", "c_total")


def state(g: Group) -> dict[str, float] | None:
    """The fused path's state for a checkpoint (None when it is off)."""
    return None if g.fast is None else {k: getattr(g.fast, k) for k in SAVED}


def restore(g: Group, saved: dict[str, float] | None, method: str) -> None:
    """Take a checkpoint's fused-path state back (or drop it: the torch path then seeds it)."""
    g.fast = None
    if saved is None or not eligible(g, method):
        return
    st = _new_state(g)
    for k in SAVED:
        setattr(st, k, int(saved[k]) if k == "lim" else float(saved[k]))
    g.fast = st


def backward(g: Group, st: FastState, weights: tuple[Tensor, ...], grads: tuple[Tensor, ...],
             m: Tensor, beta: float, s: float) -> list[Tensor]:
    """dL/dw of the soft mask (see spartan.masking) in two fused passes, by the library that
    made the forward's buffers (st: the state at the forward)."""
    lib = st.lib
    assert lib is not None
    gs = [gr.to(torch.float32).contiguous() for gr in grads]
    outs = [torch.empty_like(w, memory_format=torch.contiguous_format) for w in weights]
    view, keep = _native.view(st.offsets, st.geom, list(weights), outs, g.solver_costs, g.v, m,
                              _native.threads(st.weights))
    gp = _native.pointers(gs)
    lam = lib.sp_grad_dot(ctypes.byref(view), gp) / max(s, 1e-30)
    lib.sp_grad(ctypes.byref(view), gp, _native.pointers(outs), beta, lam)
    del keep
    return outs
