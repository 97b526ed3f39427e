"""What one example forward shows about a model, for tracing it in parts (spartan.channels).

Where a module cannot be traced whole, its children are traced one by one. The output of one
child may then feed the next (Hugging Face's BertIntermediate -> BertOutput: the MLP's hidden
units cross two sibling modules). Such a tensor is *linked*, its channels followed from the
producer's trace into the reader's, only when the forward proves that nothing else saw it: every
torch op that read it ran inside the one sibling that takes it as an argument. Anything less
(the parent adds it to something, returns it, views it) and its channels stay pinned.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from spartan.channel_views import Track


@dataclass
class Run:
    inputs: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # first (args, kwargs)
    outputs: dict[str, Any] = field(default_factory=dict)  # first output
    order: dict[str, int] = field(default_factory=dict)  # call order
    reads: dict[int, set[str]] = field(default_factory=dict)  # tensor id -> innermost modules
    # tensor id -> (the producer's channels of it, the sibling that reads it): a link waiting
    # for the reader's trace
    pending: dict[int, tuple[Track, str]] = field(default_factory=dict)

    def first_call(self, name: str) -> float:
        """When `name`, or the first of its submodules (a ModuleList is never called), ran."""
        prefix = f"{name}." if name else ""
        found = [i for n, i in self.order.items() if n == name or n.startswith(prefix)]
        return min(found, default=math.inf)


class _Reads(TorchFunctionMode):
    """Records, for every tensor a torch op reads, the module the op ran in."""

    def __init__(self, stack: list[str], reads: dict[int, set[str]]) -> None:
        super().__init__()
        self.stack, self.reads = stack, reads
        self.alive: list[Tensor] = []  # every tensor read, kept: no id is reused in the pass

    def __torch_function__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        where = self.stack[-1] if self.stack else ""
        for t in _tensors((args, kwargs)):
            self.reads.setdefault(id(t), set()).add(where)
            self.alive.append(t)
        return func(*args, **kwargs)


def _tensors(x: Any) -> list[Tensor]:
    if isinstance(x, Tensor):
        return [x]
    if isinstance(x, (tuple, list)):
        return [t for v in x for t in _tensors(v)]
    if isinstance(x, dict):
        return [t for v in x.values() for t in _tensors(v)]
    return []


def record(model: nn.Module, example: tuple[Any, ...]) -> Run:
    """One forward pass on `example`, recorded (Run)."""
    run, stack = Run(), []
    hooks = []
    for name, mod in model.named_modules():
        def pre(m: nn.Module, args: Any, kwargs: Any, n: str = name) -> None:
            if n not in run.inputs:
                run.inputs[n], run.order[n] = (args, kwargs), len(run.order)
            stack.append(n)

        def post(m: nn.Module, args: Any, kwargs: Any, out: Any, n: str = name) -> None:
            run.outputs.setdefault(n, out)  # kept alive: its id stays its own
            stack.pop()
        hooks.append(mod.register_forward_pre_hook(pre, with_kwargs=True))
        hooks.append(mod.register_forward_hook(post, with_kwargs=True))
    try:
        with _Reads(stack, run.reads):
            model(*example)
    finally:
        for h in hooks:
            h.remove()
    return run


def positional(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
    """A call's arguments in the order of forward's parameters (the traced placeholders)."""
    bound = inspect.signature(module.forward).bind(*args, **kwargs)
    bound.apply_defaults()
    return list(bound.arguments.values())


def reader(run: Run, producer: str, siblings: set[str]) -> str | None:
    """The sibling that alone reads `producer`'s output (module doc), or None."""
    out = run.outputs.get(producer)
    if not isinstance(out, Tensor) or any(out is t for t in _tensors(run.outputs.get(""))):
        return None  # (a tensor the model returns is read by its caller)
    # a read in the parent itself, or outside it, has no owner: no link
    owners = {next((s for s in siblings if w == s or w.startswith(f"{s}.")), None)
              for w in run.reads.get(id(out), set())}
    if len(owners) != 1:
        return None
    (owner,) = owners
    if owner is None or owner == producer or owner not in run.inputs:
        return None
    args, kwargs = run.inputs[owner]
    return owner if any(v is out for v in _tensors((args, kwargs))) else None
