"""Keep the activations at a model's computation points during one forward: the recorder `compare` needs.

`capture.trace` keeps statistics; comparing needs the tensors themselves, and replaying a module needs
the arguments it was called with. One forward hook (with kwargs) per module, always removed on exit.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from copy import deepcopy
from dataclasses import dataclass, field
from typing import Any

import torch

from ..lm.intercept import Client, ModuleCall, intercept
from .points import Point

MAIN_INPUT_NAMES = ("hidden_states", "x", "input", "hidden_state", "inputs_embeds")


@dataclass
class Call:
    """One module call: its main input and output (B, T, C), and everything it was called with.

    snapshot: args and kwargs are deep copies taken before the call (a KV cache as it was before the module
    wrote to it); a replay must copy them again, since the module writes to what it is given.
    """

    input: torch.Tensor | None
    output: torch.Tensor | None
    args: tuple[Any, ...] = field(repr=False, default=())
    kwargs: dict[str, Any] = field(repr=False, default_factory=dict)
    snapshot: bool = False

    def arguments(self) -> tuple[list[Any], dict[str, Any]]:
        """The call's arguments, fresh copies when they are a snapshot."""
        if self.snapshot:
            args, kwargs = deepcopy((self.args, self.kwargs))
            return list(args), kwargs
        return list(self.args), dict(self.kwargs)


def main_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str | int, torch.Tensor] | None:
    """Where the hidden states enter a call: (position or keyword, tensor)."""
    for i, a in enumerate(args):
        if isinstance(a, torch.Tensor) and a.is_floating_point() and a.dim() >= 2:
            return i, a
    for name in MAIN_INPUT_NAMES:
        if isinstance(kwargs.get(name), torch.Tensor):
            return name, kwargs[name]
    return None


def main_output(out: Any) -> torch.Tensor | None:
    """The hidden states a call returns: the tensor itself, or the first floating tensor of a tuple."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return next((o for o in out if isinstance(o, torch.Tensor) and o.is_floating_point()), None)
    value = getattr(out, "last_hidden_state", None)
    return value if isinstance(value, torch.Tensor) else None


class Recording(Client):
    """An observer of the named modules: the first call of each, as a `Call` (see `record`)."""

    def __init__(self, names: Iterable[str], snapshot: bool) -> None:
        self.modules, self.snapshot = tuple(names), snapshot
        self.calls: dict[str, Call] = {}
        self.before: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {}

    def module_input(self, call: ModuleCall) -> None:
        if self.snapshot and call.name not in self.before:
            self.before[call.name] = deepcopy((call.args, call.kwargs))

    def module_output(self, call: ModuleCall) -> None:
        if call.name in self.calls:
            return
        args, kwargs = call.args, call.kwargs
        found = main_input(args, kwargs)
        if self.snapshot:
            args, kwargs = self.before[call.name]
        self.calls[call.name] = Call(found[1].detach() if found else None, _detached(main_output(call.output)),
                                     args, dict(kwargs), self.snapshot)


@contextmanager
def record(model: torch.nn.Module, points: list[Point], snapshot: bool = False) -> Iterator[dict[str, Call]]:
    """Calls of each point's module of `model` during the `with` body, keyed by module name (first call kept).

    snapshot: keep deep copies of each call's arguments taken before it ran (for a cached step, whose modules
    write to the cache they are given); costs a copy of the cache per point, so ask for it for few points.
    """
    seen = Recording(dict.fromkeys(p.module_name for p in points if p.module is not None), snapshot)
    with intercept(model, seen):
        yield seen.calls


def _detached(x: torch.Tensor | None) -> torch.Tensor | None:
    return None if x is None else x.detach()
