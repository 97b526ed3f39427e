"""Sparsifier: trains a model to a cost budget with Spartan, Top-KAST-style dual averaging or IMP.

Lifecycle like torch.ao.pruning: attach (`Sparsifier(model, config, total_steps)`), `step()`
after each optimiser step, `finalize()` for plain modules with exact zeros; `state_dict()` /
`load_state_dict()` to resume. Masked weights become parametrizations (torch.nn.utils.
parametrize) whose value a forward pre-hook on the model prepares once per forward.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from spartan import _fast
from spartan import distributed as _dist
from spartan.allocation import group_fractions
from spartan.build import Costs, build_groups, build_layers, nm_groups
from spartan.config import SparsifierConfig
from spartan.layout import block_numel
from spartan.masking import Group, MaskedWeights, beta_factor
from spartan.report import LayerReport, SparsityReport
from spartan.schedule import Schedule
from spartan.topk import no_autocast

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

_STATE_VERSION = 1


class _Masked(nn.Module):
    """Parametrization of one masked weight; the Sparsifier prepares its value."""

    def __init__(self, owner: Sparsifier, name: str) -> None:
        super().__init__()
        self._owner = owner
        self._name = name

    def forward(self, original: Tensor) -> Tensor:
        return self._owner._weight(self._name, original)


class Sparsifier:
    """Masks the maskable weights of `model` and anneals them to `config.budget` of the cost.

    costs: per-block costs keyed by full parameter name (tensors of the layer's block grid, or
    numbers), or a callable(name, param, grid) returning one; default: one per weight, so a
    block costs its number of weights. Create the optimiser after the Sparsifier or before it,
    but the same way when resuming (attaching changes the order of model.parameters()).

    Under torch.distributed (initialised, more than one rank; or `process_group`), attach on
    every rank before wrapping the model in DistributedDataParallel and call `step()` on every
    rank: each step's masks are rank 0's, bit for bit (spartan.distributed says why and how).
    FSDP-sharded models are refused.
    With config.structure == "channels" this makes a spartan.channel_sparsifier.
    ChannelSparsifier, which needs example_inputs and takes per-layer costs (see there).
    """

    def __new__(cls, model: nn.Module, config: SparsifierConfig, *args: Any,
                **kwargs: Any) -> Sparsifier:
        if cls is Sparsifier and getattr(config, "structure", "weights") == "channels":
            from spartan.channel_sparsifier import ChannelSparsifier

            return super().__new__(ChannelSparsifier)
        return super().__new__(cls)

    def __init__(
        self,
        model: nn.Module,
        config: SparsifierConfig,
        total_steps: int,
        costs: Costs = None,
        *,
        process_group: ProcessGroup | None = None,
        example_inputs: Any = None,
    ) -> None:
        self._setup(model, config, total_steps, process_group)
        self._layers = build_layers(model, config, costs)
        self._groups = build_groups(self._layers, config.allocation)
        if config.nm is not None:
            nm_groups(self._groups, config.nm[1])
        self._where = {lay.name: (g, i) for g in self._groups for i, lay in enumerate(g.layers)}
        self._stash: dict[str, Tensor] = {}
        self._param_order = {id(lay.module): list(lay.module._parameters) for lay in self._layers}
        for layer in self._layers:
            parametrize.register_parametrization(
                layer.module, layer.attr, _Masked(self, layer.name), unsafe=True)
        self._hooks = [model.register_forward_pre_hook(self._begin_forward),
                       model.register_forward_hook(self._end_forward)]
        self._refresh()

    def _setup(self, model: nn.Module, config: SparsifierConfig, total_steps: int,
               process_group: ProcessGroup | None) -> None:
        """What every Sparsifier holds (weights and channels alike)."""
        if not isinstance(config, SparsifierConfig):
            raise ValueError(f"config must be a SparsifierConfig, got {type(config).__name__}")
        _dist.refuse_sharded(model)
        self._pg = _dist.available_group(process_group)
        self.adopted = 0  # steps at which this rank's own masks differed from rank 0's
        self.model, self.config = model, config
        self.schedule = Schedule(config, total_steps)
        self._step, self._frozen, self._finalized = 0, False, False

    def _check_state(self, state: Mapping[str, Any], **expect: Any) -> None:
        """ValueError unless a state_dict was saved with this config, schedule and `expect`."""
        expect = {"config": self.config.to_dict(), "total_steps": self.schedule.total_steps,
                  **expect}
        for key, value in expect.items():
            if state.get(key) != value:
                raise ValueError(f"state {key} {state.get(key)!r} does not match {value!r}")

    # -- training -------------------------------------------------------------------------
    @property
    def step_count(self) -> int:
        """Optimiser steps done so far."""
        return self._step

    @property
    def frozen(self) -> bool:
        """Masks are final (finetune phase)."""
        return self._frozen

    @property
    def weights(self) -> dict[str, nn.Parameter]:
        """The dense weights being trained, by parameter name on the plain model."""
        return {lay.name: lay.param for lay in self._layers}

    def step(self) -> None:
        """Call after each optimiser step: advances the schedules and updates the masks."""
        self._check_live()
        self._step += 1
        self._refresh()

    def _refresh(self) -> None:
        with torch.no_grad(), no_autocast(self._layers[0].param):
            if self._frozen:
                for g in self._groups:
                    g.rebuild()
            else:
                t, cfg = self._step, self.config
                fraction = self.schedule.fraction(t)
                beta = self.schedule.beta(t) * beta_factor(cfg.block)
                fracs = group_fractions(cfg.allocation, fraction,
                                        [tuple(lay.param.shape) for lay in self._layers],
                                        [g.total_cost for g in self._groups])
                for g, f in zip(self._groups, fracs, strict=True):
                    g.update(cfg.method, f, beta, cfg.beta_scale == "mean")
                if self._pg is not None:
                    self._sync(0, adopt_step=False)
                if self.schedule.frozen(t):
                    self._freeze()
        self._record_versions()

    def _freeze(self) -> None:
        for g in self._groups:
            if g.mode != "dense":
                g.bake()
                g.mode = "hard"
                g.release_soft()
                g.rebuild()
        self._frozen = True

    def broadcast(self, src: int = 0) -> None:
        """Collective: every rank takes rank `src`'s step and masks (after `load_state_dict` on
        that rank alone, say). The weights travel with the model (DistributedDataParallel
        broadcasts rank 0's when it wraps the model). No-op without torch.distributed."""
        self._check_live()
        if self._pg is not None:
            with torch.no_grad(), no_autocast(self._layers[0].param):
                self._sync(src, adopt_step=True)
            self._record_versions()

    def _sync(self, src: int, adopt_step: bool) -> None:
        """Rank src's decision of this step on every rank (see spartan.distributed)."""
        assert self._pg is not None
        device = self._layers[0].param.device
        mine = _dist.decide(self._step, self._frozen, self._groups, device)
        theirs = _dist.exchange(mine, self._groups, self._pg, src)
        step, frozen = theirs.header.tolist()
        if adopt_step:
            self._step, self._frozen = int(step), bool(frozen)
        elif (int(step), bool(frozen)) != (self._step, self._frozen):
            raise ValueError(f"this rank is at step {self._step}, rank {src} at {int(step)}: "
                             "call Sparsifier.step() on every rank after each optimiser step")
        rows = theirs.scalars.tolist()
        changed = False
        for i, g in enumerate(self._groups):
            if _dist.differs(mine, theirs, i):
                self._load_group(g, _dist.group_state(rows[i], theirs.masks[i], theirs.taus[i]))
                changed = True
        self.adopted += changed

    def _load_group(self, g: Group, gs: Mapping[str, Any]) -> None:
        """One group's masks from a state_dict entry (h None: the fused path's thresholds
        decide it), its forward buffers rebuilt from the current weights."""
        if gs["mode"] == "dense":
            g.set_dense()
            return
        tau = gs["tau"]
        g.mode, g.beta = gs["mode"], float(gs["beta"])
        g.tau = tau.to(g.v.device, g.v.dtype) if isinstance(tau, Tensor) else tau
        if gs["h"] is not None:
            g.set_hard(gs["h"].to(device=g.v.device, dtype=torch.bool).reshape(-1).clone())
        if gs.get("fused", True):
            _fast.restore(g, gs.get("fast"), self.config.method)
            if gs["h"] is None and g.fast is None:
                raise ValueError("rank 0 used the fused CPU passes and this rank cannot (no C "
                                 "compiler, or SPARTAN_NATIVE differs): set SPARTAN_NATIVE "
                                 "alike on every rank")
            g.rebuild()
        else:  # the sender's buffers came from the torch path: the same here, bit for bit
            g.fast = None
            g.rebuild()
            _fast.restore(g, gs.get("fast"), self.config.method)

    def _record_versions(self) -> None:
        for lay in self._layers:
            lay.version = lay.param._version

    def _ensure_fresh(self) -> None:
        """Rebuild forward weights if a weight changed since the last step (e.g. loaded)."""
        for lay in self._layers:
            if _original(lay.module, lay.attr) is not lay.param:
                raise ValueError(
                    f"{lay.name} was replaced after the Sparsifier was attached (FSDP's "
                    "fully_shard does this): masks would follow the old tensor. Use "
                    "DistributedDataParallel, or attach after such wrapping is undone "
                    "(see docs/distributed.md)")
            if (lay.param.device, lay.param.dtype) != lay.layout:
                raise ValueError(
                    f"{lay.name} moved to {lay.param.device}/{lay.param.dtype} after the "
                    f"Sparsifier was attached on {lay.layout[0]}/{lay.layout[1]}; move or cast "
                    "the model first, then attach")
        if any(lay.param._version != lay.version for lay in self._layers):
            with torch.no_grad(), no_autocast(self._layers[0].param):
                for g in self._groups:
                    g.rebuild()
            self._record_versions()

    def _begin_forward(self, module: nn.Module, args: Any) -> None:
        self._ensure_fresh()
        stash = {}
        for g in self._groups:
            if g.mode != "dense":
                outs = MaskedWeights.apply(g, *[lay.param for lay in g.layers])
                stash.update({lay.name: o for lay, o in zip(g.layers, outs, strict=True)})
        self._stash = stash

    def _end_forward(self, module: nn.Module, args: Any, output: Any) -> None:
        self._stash = {}

    def _weight(self, name: str, original: Tensor) -> Tensor:
        out = self._stash.get(name)
        if out is not None:
            return out
        group, index = self._where[name]
        if group.mode == "dense":
            return original
        self._ensure_fresh()  # weight read outside a forward of the model
        return MaskedWeights.apply(group, *[lay.param for lay in group.layers])[index]

    # -- results --------------------------------------------------------------------------
    def masks(self, expand: bool = True) -> dict[str, Tensor]:
        """Hard masks by parameter name: weight-shaped bools, or block grids if not expand."""
        self._check_live()
        out = {}
        for g in self._groups:
            for lay in g.layers:
                h = g.h[lay.start:lay.stop].view(lay.grid)
                out[lay.name] = lay.mul_blocks(torch.ones_like(lay.param, dtype=torch.bool),
                                               h.reshape(-1)) if expand else h.clone()
        return out

    def report(self) -> SparsityReport:
        """Kept blocks, weights and cost of each masked weight (hard masks of this step)."""
        self._check_live()
        budget_cost = self.config.budget * sum(g.total_cost for g in self._groups)
        rows = []
        for g in self._groups:
            for lay in g.layers:
                h = g.h[lay.start:lay.stop]
                kept = int(h.sum())
                numel = block_numel(lay.param.shape, lay.block)
                kept_cost = float(lay.cost.reshape(-1)[h].sum(dtype=torch.float64))
                rows.append(LayerReport(
                    name=lay.name, shape=tuple(lay.param.shape), block=lay.block,
                    blocks=h.numel(), kept_blocks=kept, weights=lay.param.numel(),
                    kept_weights=kept * numel, cost=float(lay.cost.sum(dtype=torch.float64)),
                    kept_cost=kept_cost, budget_share=kept_cost / budget_cost,
                    fallback=lay.fallback))
        c = self.config
        return SparsityReport(c.method, c.allocation, c.budget, self._step, tuple(rows))

    def finalize(self) -> SparsityReport:
        """Write the masked weights into plain modules (exact zeros) and detach everything."""
        self._check_live()
        self._ensure_fresh()
        for g in self._groups:
            g.bake()
        rep = self.report()
        for lay in self._layers:
            parametrize.remove_parametrizations(lay.module, lay.attr, leave_parametrized=False)
            _restore_order(lay.module, self._param_order[id(lay.module)])
        for hook in self._hooks:
            hook.remove()
        self._stash, self._finalized = {}, True
        for g in self._groups:
            g.release_soft()
            for lay in g.layers:
                lay.weff = None
        return rep

    def _check_live(self) -> None:
        if self._finalized:
            raise ValueError("this Sparsifier was finalized")

    # -- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Step, masks and soft-mask thresholds; the weights are in the model's state_dict."""
        self._check_live()
        return {
            "version": _STATE_VERSION,
            "config": self.config.to_dict(),
            "total_steps": self.schedule.total_steps,
            "layers": [lay.name for lay in self._layers],
            "step": self._step,
            "frozen": self._frozen,
            "groups": [{"mode": g.mode, "tau": g.tau, "beta": g.beta, "h": g.h.clone(),
                        "fast": _fast.state(g)} for g in self._groups],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state_dict; load the model's own state_dict first or after, either works."""
        self._check_live()
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported Sparsifier state version {state.get('version')!r}")
        self._check_state(state, layers=[lay.name for lay in self._layers])
        if len(state["groups"]) != len(self._groups):
            raise ValueError("state has a different number of budget groups")
        for g, gs in zip(self._groups, state["groups"], strict=True):
            if gs["h"].numel() != g.n or gs["mode"] not in ("dense", "soft", "ste", "hard"):
                raise ValueError("state masks do not match the masked weights")
        self._step, self._frozen = int(state["step"]), bool(state["frozen"])
        with torch.no_grad(), no_autocast(self._layers[0].param):
            for g, gs in zip(self._groups, state["groups"], strict=True):
                self._load_group(g, gs)
        self._record_versions()


def _original(module: nn.Module, attr: str) -> object:
    """The tensor a parametrized weight reads (None when it is no longer parametrized)."""
    plist = getattr(getattr(module, "parametrizations", None), attr, None)
    return getattr(plist, "original", None)


def _restore_order(module: nn.Module, order: list[str]) -> None:
    """Put a module's parameters back in their original order (state_dict key order)."""
    params = dict(module._parameters)
    module._parameters.clear()
    module._parameters.update({k: params[k] for k in order if k in params})
    module._parameters.update({k: v for k, v in params.items() if k not in order})
