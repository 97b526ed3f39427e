"""Structured sparsity: whole output channels, hidden units and heads (`structure="channels"`).

Items come from spartan.channels (coupled channels are one item). The mask scales an item's
channels where every reader of them sees it: the inputs of the Linear / Conv2d layers that
consume them (a forward pre-hook), and for attention heads the columns of the output
projection (a pre-hook on o_proj, a parametrization of nn.MultiheadAttention's out_proj).
A zero there removes the item exactly, after any BatchNorm affine, activation or residual sum
in between, so the finalized model and `spartan.shrink` give the masked model's outputs.

Value of an item: the L1 norm (sum of |w|) of every weight it owns: its producers' rows and
biases, its BatchNorm scales and shifts, its consumers' columns (a head: its q / k / v rows and
output columns). All of them vanish when the item is removed. L1, because an item is the set
of its weights and a block's value in weight mode is the sum of its |w| (DESIGN.md): value and
cost both grow with the weights an item spans, so value per cost stays an average magnitude per
unit of cost. (An L2 norm grows as the square root of that size while the cost grows linearly:
it made residual-stream channels, which span many layers, look cheap to drop: the quick
benchmark's ResNet at 50% of dense latency scored 68.1% with it, 76.3% with L1.)
Gradients reach the weights through the value (the soft mask's
implicit gradient, DESIGN.md) and through the scaled activations.

Methods: spartan scales by m h (forward) with the hard restriction as identity backward;
dual_averaging by h with a straight-through backward; imp by h, pruned items never return.
Costs (spartan.channel_costs) are bilinear in a layer's widths and re-linearised at every mask
update until the freeze; the budget holds on the exact cost. Floors: each layer group (the
items living in the same layers) keeps at least ceil(min_keep x its items), and at least one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from spartan import distributed as _dist
from spartan.channel_costs import (
    LayerCost,
    check_costs,
    dense_costs,
    item_costs,
    total_cost,
    variable_cost,
    widths,
)
from spartan.channels import ChannelGraph, Layer, trace_channels
from spartan.config import SparsifierConfig
from spartan.report import LayerReport, SparsityReport
from spartan.schedule import Schedule
from spartan.sparsifier import Sparsifier
from spartan.topk import hard_threshold, soft_mask_from_tau, solve_threshold

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

_STATE_VERSION = 1
_MODES = ("dense", "soft", "ste", "hard")
_FIX_ITERS = 4  # re-linearise and re-solve while the exact cost is over the budget


class _Scale(torch.autograd.Function):
    """x scaled along `dim` by soft x hard; backward: dx = g soft, d soft = sum(g x)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, soft: Tensor, hard: Tensor,  # type: ignore[override]
                dim: int) -> Tensor:
        view = [1] * x.dim()
        view[dim] = -1
        ctx.view, ctx.dim = view, dim
        ctx.save_for_backward(x, soft)
        return x * (soft * hard).view(view).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, soft = ctx.saved_tensors
        gx = g * soft.view(ctx.view).to(g.dtype)
        gs = None
        if ctx.needs_input_grad[1]:
            dims = [d for d in range(x.dim()) if d != ctx.dim % x.dim()]
            gs = (g * x).sum(dims).to(soft.dtype)
        return gx, gs, None, None


class _HeadColumns(nn.Module):
    """Parametrization of nn.MultiheadAttention.out_proj.weight: head columns scaled."""

    def __init__(self, owner: ChannelSparsifier, layer: str) -> None:
        super().__init__()
        self._owner, self._layer = owner, layer

    def forward(self, w: Tensor) -> Tensor:
        return self._owner._scale_heads(self._layer, w, 1)


class ChannelSparsifier(Sparsifier):
    """The Sparsifier for structure="channels" (made by `Sparsifier(...)`; same lifecycle)."""

    def __init__(self, model: nn.Module, config: SparsifierConfig, total_steps: int,
                 costs: Mapping[str, Any] | None = None, *,
                 process_group: ProcessGroup | None = None, example_inputs: Any = None) -> None:
        if example_inputs is None:
            raise ValueError("structure='channels' needs example_inputs (one input batch) to "
                             "trace the model")
        _dist.refuse_sharded(model)
        self._pg = _dist.available_group(process_group)
        self.adopted = 0  # steps at which this rank's own masks differed from rank 0's
        self.model, self.config = model, config
        self.schedule = Schedule(config, total_steps)
        self.graph: ChannelGraph = trace_channels(model, example_inputs)
        g = self.graph
        if g.n_items == 0:
            raise ValueError("no channel of this model can be removed: every one is an input "
                             "or output or is read by an op that mixes channels "
                             f"({'; '.join(g.fallbacks) or 'see spartan.channels'})")
        self.costs: dict[str, LayerCost] = check_costs(g, costs)
        self.device = next(model.parameters()).device
        n = g.n_items
        for lay in g.layers.values():
            lay.in_items, lay.out_items = lay.in_items.to(self.device), lay.out_items.to(
                self.device)
        for norm in g.norms.values():
            norm.items = norm.items.to(self.device)
        self._budget_groups = [torch.arange(n)] if config.allocation == "global" else \
            [grp.clone() for grp in g.groups]
        self._floor = {int(i): max(1, math.ceil(config.min_keep * len(grp)))
                       for i, grp in enumerate(g.groups)}
        self._dense_total = sum(dense_costs(g, self.costs).values())
        self._h = torch.ones(n, dtype=torch.bool)
        self._c = item_costs(g, self.costs, self._h)
        self._mode = "dense"
        self._soft: list[dict[str, Any] | None] = [None] * len(self._budget_groups)
        self._step, self._frozen, self._finalized = 0, False, False
        self._masks_now: tuple[Tensor, Tensor] | None = None
        self._hooks: list[Any] = [model.register_forward_pre_hook(self._begin),
                                  model.register_forward_hook(self._end)]
        self._parametrized: list[nn.Module] = []
        for lay in g.layers.values():
            self._attach(lay)
        self._refresh()

    # -- attaching --------------------------------------------------------------------------
    def _attach(self, lay: Layer) -> None:
        mod = lay.module
        if lay.kind == "attention":
            if isinstance(mod, nn.MultiheadAttention):
                parametrize.register_parametrization(mod.out_proj, "weight",
                                                     _HeadColumns(self, lay.name), unsafe=True)
                self._parametrized.append(mod.out_proj)
            else:
                out = getattr(mod, "o_proj", None) or mod.out_proj
                self._hooks.append(out.register_forward_pre_hook(
                    lambda m, args, name=lay.name: (self._scale_heads(name, args[0], -1),
                                                    *args[1:])))
            return
        if bool((lay.in_items >= 0).any()):
            dim = 1 if lay.kind == "conv" else -1
            self._hooks.append(mod.register_forward_pre_hook(
                lambda m, args, lay=lay, dim=dim: (self._scale_in(lay, args[0], dim),
                                                   *args[1:])))

    def _masks(self) -> tuple[Tensor, Tensor] | None:
        if self._masks_now is None and self._mode != "dense":
            self._masks_now = self._item_masks()
        return self._masks_now

    def _scale_in(self, lay: Layer, x: Tensor, dim: int) -> Tensor:
        masks = self._masks()
        if masks is None:
            return x
        soft, hard = masks
        idx = torch.where(lay.in_items >= 0, lay.in_items, self.graph.n_items)
        return _Scale.apply(x, soft[idx], hard[idx], dim)

    def _scale_heads(self, name: str, x: Tensor, dim: int) -> Tensor:
        masks = self._masks()
        if masks is None:
            return x
        lay = self.graph.layers[name]
        soft, hard = masks
        idx = torch.where(lay.out_items >= 0, lay.out_items, self.graph.n_items)
        idx = idx.repeat_interleave(lay.head_dim)
        return _Scale.apply(x, soft[idx], hard[idx], dim)

    def _begin(self, module: nn.Module, args: Any) -> None:
        self._masks_now = None if self._mode == "dense" else self._item_masks()

    def _end(self, module: nn.Module, args: Any, output: Any) -> None:
        self._masks_now = None

    # -- values and masks -------------------------------------------------------------------
    def values(self) -> Tensor:
        """L1 norm of each item's weights (module doc), differentiable in the weights."""
        g, n = self.graph, self.graph.n_items
        acc = torch.zeros(n + 1, device=self.device, dtype=torch.float32)
        for lay in g.layers.values():
            out_idx = torch.where(lay.out_items >= 0, lay.out_items, n)
            in_idx = torch.where(lay.in_items >= 0, lay.in_items, n)
            rows, cols = _row_col(lay, torch.abs)
            acc = acc.index_add(0, out_idx, rows.float())
            if cols is not None:
                acc = acc.index_add(0, in_idx, cols.float())
        for norm in g.norms.values():
            mod = norm.module
            if getattr(mod, "affine", False):
                sq = mod.weight.abs() + mod.bias.abs()  # type: ignore[operator]
                idx = torch.where(norm.items >= 0, norm.items, n)
                acc = acc.index_add(0, idx, sq.float())
        return acc[:n]

    def _item_masks(self) -> tuple[Tensor, Tensor]:
        """(soft, hard) masks over items plus a trailing 1 for pinned channels."""
        n, dev = self.graph.n_items, self.device
        hard = torch.cat([self._h.to(dev, torch.float32), torch.ones(1, device=dev)])
        if self._mode == "ste":
            return torch.ones(n + 1, device=dev), hard
        if self._mode == "hard":
            return hard, hard
        grad = torch.is_grad_enabled()
        v = self.values() if grad else None
        soft = torch.ones(n, device=dev)
        for state in self._soft:
            if state is None:
                continue
            free = state["free"].to(dev)
            if v is None:
                v = self.values()
            m = soft_mask_from_tau(v[free], state["c"].to(dev), state["tau"], state["beta"])
            soft = soft.index_put((free,), m)
        return torch.cat([soft, torch.ones(1, device=dev)]), hard

    # -- training ---------------------------------------------------------------------------
    @property
    def step_count(self) -> int:
        return self._step

    @property
    def frozen(self) -> bool:
        return self._frozen

    @property
    def weights(self) -> dict[str, nn.Parameter]:
        """The main weight of each layer whose width changes, by parameter name."""
        out = {}
        for lay in self.graph.layers.values():
            w = lay.weight
            attr = next(n for n, p in lay.module.named_parameters() if p is w)
            out[f"{lay.name}.{attr}" if lay.name else attr] = w
        return out  # type: ignore[return-value]

    def step(self) -> None:
        """Call after each optimiser step: advances the schedules and updates the masks."""
        self._check_live()
        self._step += 1
        self._refresh()

    def _refresh(self) -> None:
        if self._frozen:
            return
        t = self._step
        fraction = self.schedule.fraction(t)
        freeze = self.schedule.frozen(t)
        with torch.no_grad():
            if fraction >= 1.0:
                self._mode, self._h = "dense", torch.ones_like(self._h)
                self._soft = [None] * len(self._budget_groups)
            else:
                v = self.values().detach().double().cpu()
                self._update(v, fraction, self.schedule.beta(t), freeze)
            if self._pg is not None:
                self._sync(0, adopt_step=False)
            if freeze:
                self._freeze()

    def broadcast(self, src: int = 0) -> None:
        """Collective: every rank takes rank `src`'s step and masks. No-op without
        torch.distributed."""
        self._check_live()
        if self._pg is not None:
            self._sync(src, adopt_step=True)

    def _decision(self) -> tuple[Tensor, Tensor]:
        """(float64 [step, frozen, mode, c..., per budget group: has soft, tau, beta],
        uint8 [h..., in a soft pool...]) of this rank."""
        n = self.graph.n_items
        pool = torch.zeros(n, dtype=torch.bool)
        rows = []
        for s in self._soft:
            if s is None:
                rows += [0.0, 0.0, 0.0]
            else:
                pool[s["free"]] = True
                rows += [1.0, s["tau"], s["beta"]]
        head = [float(self._step), float(self._frozen), float(_MODES.index(self._mode))]
        floats = torch.cat([torch.tensor(head, dtype=torch.float64), self._c.double(),
                            torch.tensor(rows, dtype=torch.float64)])
        return floats, torch.cat([self._h, pool]).to(torch.uint8)

    def _sync(self, src: int, adopt_step: bool) -> None:
        """Rank src's masks on every rank: the knapsack and tau depend on sums whose last bits
        differ between ranks (spartan.distributed), so rank src decides for all."""
        import torch.distributed as dist

        assert self._pg is not None
        pg, n = self._pg, self.graph.n_items
        root = dist.get_global_rank(pg, src)
        floats, bits = self._decision()
        mine = (floats.clone(), bits.clone())
        dev = self.device if dist.get_backend(pg) == "nccl" else torch.device("cpu")
        floats, bits = floats.to(dev), bits.to(dev)
        dist.broadcast(floats, root, group=pg)
        dist.broadcast(bits, root, group=pg)
        floats, bits = floats.cpu(), bits.cpu()
        step, frozen = int(floats[0]), bool(floats[1])
        if adopt_step:
            self._step, self._frozen = step, frozen
        elif (step, frozen) != (self._step, self._frozen):
            raise ValueError(f"this rank is at step {self._step}, rank {src} at {step}: call "
                             "Sparsifier.step() on every rank after each optimiser step")
        if torch.equal(floats.view(torch.int64), mine[0].view(torch.int64)) and \
                torch.equal(bits, mine[1]):
            return
        self.adopted += 1
        self._mode = _MODES[int(floats[2])]
        self._c = floats[3:3 + n].clone()
        self._h = bits[:n].bool().clone()
        pool = bits[n:].bool()
        rows = floats[3 + n:].view(-1, 3).tolist()
        self._soft = []
        for idx, (has, tau, beta) in zip(self._budget_groups, rows, strict=True):
            free = idx[pool[idx]]
            self._soft.append({"free": free, "c": self._c[free].float(), "tau": tau,
                               "beta": beta} if has else None)
        self._masks_now = None

    def _update(self, v: Tensor, fraction: float, beta: float, final: bool) -> None:
        cfg = self.config
        target = fraction * self._dense_total
        prev = self._h.clone()
        h = prev
        for it in range(_FIX_ITERS * (5 if final else 1)):
            c = item_costs(self.graph, self.costs, h)
            h, soft = self._solve(v, c, h, prev, fraction, target, beta)
            self._c = c
            if cfg.allocation != "global" or total_cost(self.graph, self.costs, h) <= target \
                    * (1 + 1e-9):
                break
            del it
        if final and cfg.allocation == "global":
            h = self._trim(v, h, target)
        self._h, self._soft = h, soft
        self._mode = {"spartan": "soft", "dual_averaging": "ste", "imp": "hard"}[cfg.method]

    def _solve(self, v: Tensor, c: Tensor, h_lin: Tensor, prev: Tensor, fraction: float,
               target: float, beta: float) -> tuple[Tensor, list[dict[str, Any] | None]]:
        cfg, g = self.config, self.graph
        h = torch.zeros_like(prev)
        softs: list[dict[str, Any] | None] = []
        for bi, idx in enumerate(self._budget_groups):
            if cfg.allocation == "global":  # exact cost linearised at h_lin
                budget = target - total_cost(g, self.costs, h_lin) + float(c[h_lin].sum())
            else:
                budget = fraction * float(c[idx].sum())
            forced = self._forced(v, idx)
            h[forced] = True
            pool = idx[~torch.isin(idx, forced)]
            if cfg.method == "imp":
                pool = pool[prev[pool]]  # pruned items never come back
            left = budget - float(c[forced].sum())
            total = float(c[pool].sum())
            state = None
            if pool.numel() and left >= total:
                h[pool] = True
            elif pool.numel() and left > 0:
                vp, cp = v[pool].float(), c[pool].float()
                h[pool] = hard_threshold(vp, cp, left)
                if cfg.method == "spartan":
                    mean = float(vp.sum()) / float(cp.sum())
                    b = beta / mean if cfg.beta_scale == "mean" and mean > 0 else beta
                    old = self._soft[bi] if bi < len(self._soft) else None
                    warm = old["tau"] if old is not None and old["free"].numel() == pool.numel() \
                        else None
                    tau = solve_threshold(vp, cp, left, b, tau_init=warm)
                    state = {"free": pool, "c": cp, "tau": float(tau), "beta": float(b)}
            softs.append(state)
        return h, softs

    def _forced(self, v: Tensor, idx: Tensor) -> Tensor:
        """The floor of each layer group inside `idx`: its items of largest value."""
        out = []
        for gi in torch.unique(self.graph.item_group[idx]).tolist():
            members = idx[self.graph.item_group[idx] == gi]
            k = min(self._floor[int(gi)], members.numel())
            out.append(members[torch.topk(v[members], k).indices])
        return torch.cat(out) if out else idx[:0]

    def _trim(self, v: Tensor, h: Tensor, target: float) -> Tensor:
        """Drop the lowest value-per-cost free items until the exact cost fits (final masks)."""
        h = h.clone()
        forced = set()
        for idx in self._budget_groups:
            forced |= set(self._forced(v, idx).tolist())
        while total_cost(self.graph, self.costs, h) > target * (1 + 1e-9):
            c = item_costs(self.graph, self.costs, h)
            cand = [i for i in torch.nonzero(h).squeeze(1).tolist() if i not in forced]
            if not cand:
                break
            worst = min(cand, key=lambda i: float(v[i]) / float(c[i]))
            h[worst] = False
        return h

    def _freeze(self) -> None:
        """Write the soft mask's scale into the consumers, then keep h fixed."""
        if self._mode == "soft":
            self._bake()
        if self._mode != "dense":
            self._mode = "hard"
        self._soft = [None] * len(self._budget_groups)
        self._frozen = True

    def _bake(self) -> None:
        """Multiply each item's consumer columns by its soft mask (exact: consumers are
        linear in their inputs), before the mask becomes hard."""
        with torch.no_grad():
            self._masks_now = None
            soft, _ = self._item_masks()
            n = self.graph.n_items
            for lay in self.graph.layers.values():
                if lay.kind == "attention":
                    idx = torch.where(lay.out_items >= 0, lay.out_items, n)
                    w = _out_proj_weight(lay.module)
                    w.mul_(soft[idx].repeat_interleave(lay.head_dim).view(1, -1))
                elif bool((lay.in_items >= 0).any()):
                    idx = torch.where(lay.in_items >= 0, lay.in_items, n)
                    _scale_columns(lay, soft[idx])

    # -- results ----------------------------------------------------------------------------
    def item_mask(self) -> Tensor:
        """Hard mask over items (bool)."""
        return self._h.clone()

    def masks(self, expand: bool = True) -> dict[str, Tensor]:
        """Kept weights (weight-shaped bools) of each layer's main weight, by parameter name."""
        self._check_live()
        out = {}
        keep = torch.cat([self._h, torch.ones(1, dtype=torch.bool)]).to(self.device)
        n = self.graph.n_items
        for lay in self.graph.layers.values():
            for pname, mask in _weight_masks(lay, keep, n).items():
                out[pname] = mask
        return out

    def report(self) -> SparsityReport:
        """Kept widths and exact cost of each layer (hard masks of this step)."""
        self._check_live()
        keep = self._h
        budget_cost = self.config.budget * self._dense_total
        rows = []
        full = torch.ones_like(keep)
        for name, lay in self.graph.layers.items():
            kin, kout = widths(lay, keep)
            din, dout = widths(lay, full)
            cost = float(variable_cost(lay, self.costs[name], din, dout))
            kept_cost = float(variable_cost(lay, self.costs[name], kin, kout))
            w = lay.weight
            per = w.numel() / max(1.0, din * dout)
            rows.append(LayerReport(
                name=lay.name, shape=tuple(w.shape), block=(1, 1),
                blocks=int(lay.out_items.numel()),
                kept_blocks=int(round(kout / lay.head_dim)), weights=w.numel(),
                kept_weights=int(round(per * kin * kout)), cost=cost, kept_cost=kept_cost,
                budget_share=kept_cost / budget_cost if budget_cost > 0 else 0.0))
        c = self.config
        return SparsityReport(c.method, c.allocation, c.budget, self._step, tuple(rows))

    def finalize(self) -> SparsityReport:
        """Plain modules with exact zeros over every weight of each removed item."""
        self._check_live()
        if self._mode == "soft":
            self._bake()
        rep = self.report()
        with torch.no_grad():
            drop = ~torch.cat([self._h, torch.ones(1, dtype=torch.bool)]).to(self.device)
            n = self.graph.n_items
            for lay in self.graph.layers.values():
                _zero_items(lay, drop, n)
            for norm in self.graph.norms.values():
                d = drop[torch.where(norm.items >= 0, norm.items, n)]
                mod = norm.module
                for attr in ("weight", "bias", "running_mean"):
                    t = getattr(mod, attr, None)
                    if isinstance(t, Tensor):
                        t[d] = 0.0
        for h in self._hooks:
            h.remove()
        for mod in self._parametrized:
            parametrize.remove_parametrizations(mod, "weight", leave_parametrized=False)
        self._masks_now, self._finalized = None, True
        return rep

    def _check_live(self) -> None:
        if self._finalized:
            raise ValueError("this Sparsifier was finalized")

    # -- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        self._check_live()
        return {"version": _STATE_VERSION, "structure": "channels",
                "config": self.config.to_dict(), "total_steps": self.schedule.total_steps,
                "items": self.graph.n_items, "step": self._step, "frozen": self._frozen,
                "mode": self._mode, "h": self._h.clone(), "c": self._c.clone(),
                "soft": [None if s is None else {k: (v.clone() if isinstance(v, Tensor) else v)
                                                 for k, v in s.items()} for s in self._soft]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._check_live()
        if state.get("version") != _STATE_VERSION or state.get("structure") != "channels":
            raise ValueError("not a channels Sparsifier state of this version")
        expect = {"config": self.config.to_dict(), "total_steps": self.schedule.total_steps,
                  "items": self.graph.n_items}
        for key, value in expect.items():
            if state.get(key) != value:
                raise ValueError(f"state {key} {state.get(key)!r} does not match {value!r}")
        if state["mode"] not in ("dense", "soft", "ste", "hard") or \
                len(state["soft"]) != len(self._budget_groups):
            raise ValueError("state masks do not match this model")
        self._step, self._frozen, self._mode = int(state["step"]), bool(state["frozen"]), \
            str(state["mode"])
        self._h = state["h"].to("cpu", torch.bool).clone()
        self._c = state["c"].to("cpu", torch.float64).clone()
        self._soft = [None if s is None else dict(s) for s in state["soft"]]
        self._masks_now = None


# -- weights of items ---------------------------------------------------------------------
def _out_proj_weight(mod: Any) -> Tensor:
    out = mod.out_proj if isinstance(mod, nn.MultiheadAttention) else \
        (getattr(mod, "o_proj", None) or mod.out_proj)
    if parametrize.is_parametrized(out, "weight"):
        return out.parametrizations.weight.original  # type: ignore[union-attr, return-value]
    return out.weight  # type: ignore[return-value]


def _qkv(mod: nn.Module) -> list[tuple[Tensor, Tensor | None]]:
    """(weight, bias) of the q, k and v projections, rows by head."""
    if isinstance(mod, nn.MultiheadAttention):
        d = mod.embed_dim
        b = mod.in_proj_bias
        if mod._qkv_same_embed_dim:
            w = mod.in_proj_weight
            return [(w[i * d:(i + 1) * d], None if b is None else b[i * d:(i + 1) * d])
                    for i in range(3)]
        ws = [mod.q_proj_weight, mod.k_proj_weight, mod.v_proj_weight]
        return [(w, None if b is None else b[i * d:(i + 1) * d]) for i, w in enumerate(ws)]
    return [(p.weight, p.bias) for p in (mod.q_proj, mod.k_proj, mod.v_proj)]  # type: ignore


def _row_col_sq(lay: Layer) -> tuple[Tensor, Tensor | None]:
    """Per output channel (head) and per input channel: sums of squared weights."""
    return _row_col(lay, torch.square)


def _row_col(lay: Layer, f: Any) -> tuple[Tensor, Tensor | None]:
    """Per output channel (head) and per input channel: sums of f(weight) (f = abs: L1)."""
    mod = lay.module
    if lay.kind == "attention":
        h = lay.out_items.numel()
        rows = sum(f(w).sum(1).view(h, -1).sum(1) + (
            0 if b is None else f(b).view(h, -1).sum(1)) for w, b in _qkv(mod))
        rows = rows + f(_out_proj_weight(mod)).sum(0).view(h, -1).sum(1)
        return rows, None  # type: ignore[return-value]
    w = mod.weight
    bias = getattr(mod, "bias", None)
    fw = f(w)
    if lay.kind == "linear":
        rows, cols = fw.sum(1), fw.sum(0)
    else:
        w2 = fw.sum((2, 3))  # (out, in / groups)
        rows = w2.sum(1)
        g = mod.groups
        cout, per = w2.shape
        cols = w2.view(g, cout // g, per).sum(1).reshape(-1)  # input channel gi * per + j
    if bias is not None:
        rows = rows + f(bias)
    return rows, cols


def _scale_columns(lay: Layer, scale: Tensor) -> None:
    """Multiply the weight entries reading each input channel by scale[channel]."""
    mod = lay.module
    w = mod.weight
    if lay.kind == "linear":
        w.mul_(scale.view(1, -1).to(w.dtype))
        return
    g = mod.groups
    cout, per = w.shape[:2]
    # input channel gi * per + j is read by rows gi * cout/g ... at column j
    s = scale.view(g, 1, per).expand(g, cout // g, per).reshape(cout, per)
    w.mul_(s.view(cout, per, 1, 1).to(w.dtype))


def _zero_items(lay: Layer, drop: Tensor, n: int) -> None:
    mod = lay.module
    d_out = drop[torch.where(lay.out_items >= 0, lay.out_items, n)]
    if lay.kind == "attention":
        rows = d_out.repeat_interleave(lay.head_dim)
        for w, b in _qkv(mod):
            w[rows] = 0.0
            if b is not None:
                b[rows] = 0.0
        _out_proj_weight(mod)[:, rows] = 0.0
        return
    mod.weight[d_out] = 0.0
    if getattr(mod, "bias", None) is not None:
        mod.bias[d_out] = 0.0
    d_in = drop[torch.where(lay.in_items >= 0, lay.in_items, n)]
    if bool(d_in.any()):
        _scale_columns(lay, (~d_in).to(mod.weight.dtype))


def _weight_masks(lay: Layer, keep: Tensor, n: int) -> dict[str, Tensor]:
    mod = lay.module
    k_out = keep[torch.where(lay.out_items >= 0, lay.out_items, n)]
    if lay.kind == "attention":
        rows = k_out.repeat_interleave(lay.head_dim)
        pre = lay.name + "." if lay.name else ""
        out_name = pre + ("out_proj.weight" if isinstance(mod, nn.MultiheadAttention)
                          or not hasattr(mod, "o_proj") else "o_proj.weight")
        out_w = _out_proj_weight(mod)
        masks = {out_name: rows.view(1, -1).expand(out_w.shape).clone()}
        if isinstance(mod, nn.MultiheadAttention) and mod._qkv_same_embed_dim:
            masks[pre + "in_proj_weight"] = rows.repeat(3).view(-1, 1).expand(
                mod.in_proj_weight.shape).clone()
        return masks
    w = mod.weight
    m = k_out.view(-1, *([1] * (w.dim() - 1))).expand(w.shape).clone()
    k_in = keep[torch.where(lay.in_items >= 0, lay.in_items, n)]
    if lay.kind == "linear":
        m &= k_in.view(1, -1)
    else:
        g = mod.groups
        cout, per = w.shape[:2]
        s = k_in.view(g, 1, per).expand(g, cout // g, per).reshape(cout, per)
        m &= s.view(cout, per, *([1] * (w.dim() - 2)))
    return {(lay.name + "." if lay.name else "") + "weight": m}
