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
Which items are kept, under costs re-linearised as widths change, and the floors: see
spartan.channel_budget; an item's weights: spartan.channel_weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from spartan.attention_layout import projection
from spartan.channel_budget import ItemBudget
from spartan.channel_costs import (
    LayerCost,
    check_costs,
    item_costs,
)
from spartan.channel_report import layer_reports
from spartan.channel_weights import (
    ScaleItems,
    item_values,
    out_proj_weight,
    scale_columns,
    weight_masks,
    zero_items,
)
from spartan.channels import ChannelGraph, Layer, require_items, trace_channels
from spartan.config import SparsifierConfig
from spartan.report import SparsityReport
from spartan.sparsifier import Sparsifier
from spartan.topk import soft_mask_from_tau

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

_STATE_VERSION = 1
_MODES = ("dense", "soft", "ste", "hard")


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
        self._setup(model, config, total_steps, process_group)
        self.graph: ChannelGraph = trace_channels(model, example_inputs)
        g = require_items(self.graph)
        self.costs: dict[str, LayerCost] = check_costs(g, costs)
        self.device = next(model.parameters()).device
        n = g.n_items
        for lay in g.layers.values():
            lay.in_items, lay.out_items = lay.in_items.to(self.device), lay.out_items.to(
                self.device)
        for norm in g.norms.values():
            norm.items = norm.items.to(self.device)
        self._budget = ItemBudget(g, self.costs, config)
        self._budget_groups = self._budget.groups
        self._dense_total = self._budget.dense_total
        self._h = torch.ones(n, dtype=torch.bool)
        self._c = item_costs(g, self.costs, self._h)
        self._mode = "dense"
        self._soft: list[dict[str, Any] | None] = [None] * len(self._budget_groups)
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
                out = projection(mod, "o")
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
        return ScaleItems.apply(x, soft[idx], hard[idx], dim)

    def _scale_heads(self, name: str, x: Tensor, dim: int) -> Tensor:
        masks = self._masks()
        if masks is None:
            return x
        lay = self.graph.layers[name]
        soft, hard = masks
        idx = torch.where(lay.out_items >= 0, lay.out_items, self.graph.n_items)
        idx = idx.repeat_interleave(lay.head_dim)
        return ScaleItems.apply(x, soft[idx], hard[idx], dim)

    def _begin(self, module: nn.Module, args: Any) -> None:
        self._masks_now = None if self._mode == "dense" else self._item_masks()

    def _end(self, module: nn.Module, args: Any, output: Any) -> None:
        self._masks_now = None

    # -- values and masks -------------------------------------------------------------------
    def values(self) -> Tensor:
        """L1 norm of each item's weights (module doc), differentiable in the weights."""
        return item_values(self.graph, self.device)

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
    def weights(self) -> dict[str, nn.Parameter]:
        """The main weight of each layer whose width changes, by parameter name."""
        out = {}
        for lay in self.graph.layers.values():
            w = lay.weight
            attr = next(n for n, p in lay.module.named_parameters() if p is w)
            out[f"{lay.name}.{attr}" if lay.name else attr] = w
        return out  # type: ignore[return-value]

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
        self._h, self._soft, self._c = self._budget.update(v, fraction, beta, final, self._h,
                                                           self._soft)
        self._mode = {"spartan": "soft", "dual_averaging": "ste", "imp": "hard"}[
            self.config.method]

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
                    w = out_proj_weight(lay.module)
                    w.mul_(soft[idx].repeat_interleave(lay.head_dim).view(1, -1))
                elif bool((lay.in_items >= 0).any()):
                    idx = torch.where(lay.in_items >= 0, lay.in_items, n)
                    scale_columns(lay, soft[idx])

    # -- results ----------------------------------------------------------------------------
    def floor_fraction(self, min_keep: float | None = None) -> float:
        """Fraction of the dense cost the per-layer floors alone keep (spartan.channel_budget);
        above config.budget the budget cannot be met."""
        with torch.no_grad():
            return self._budget.floor_fraction(self.values().detach(), min_keep)

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
            for pname, mask in weight_masks(lay, keep, n).items():
                out[pname] = mask
        return out

    def report(self) -> SparsityReport:
        """Kept widths and exact cost of each layer (hard masks of this step)."""
        self._check_live()
        c = self.config
        return SparsityReport(c.method, c.allocation, c.budget, self._step, layer_reports(
            self.graph, self.costs, self._h, c.budget * self._dense_total))

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
                zero_items(lay, drop, n)
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
        self._check_state(state, items=self.graph.n_items)
        if state["mode"] not in ("dense", "soft", "ste", "hard") or \
                len(state["soft"]) != len(self._budget_groups):
            raise ValueError("state masks do not match this model")
        self._step, self._frozen, self._mode = int(state["step"]), bool(state["frozen"]), \
            str(state["mode"])
        self._h = state["h"].to("cpu", torch.bool).clone()
        self._c = state["c"].to("cpu", torch.float64).clone()
        self._soft = [None if s is None else dict(s) for s in state["soft"]]
        self._masks_now = None
