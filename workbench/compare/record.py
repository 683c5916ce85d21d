"""Keep the activations at a model's computation points during one forward: the recorder `compare` needs.

`capture.trace` keeps statistics; comparing needs the tensors themselves, and replaying a module needs
the arguments it was called with. One forward hook (with kwargs) per module, always removed on exit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from copy import deepcopy
from dataclasses import dataclass, field
from typing import Any

import torch

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


@contextmanager
def record(points: list[Point], snapshot: bool = False) -> Iterator[dict[str, Call]]:
    """Calls of each point's module during the `with` body, keyed by module name (first call kept).

    snapshot: keep deep copies of each call's arguments taken before it ran (for a cached step, whose modules
    write to the cache they are given); costs a copy of the cache per point, so ask for it for few points.
    """
    calls: dict[str, Call] = {}
    before: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {}
    handles = []
    modules = {p.module_name: p.module for p in points if p.module is not None}

    def pre_hook_for(name: str):  # noqa: ANN202
        def pre_hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            if name not in before:
                before[name] = deepcopy((args, kwargs))
        return pre_hook

    def hook_for(name: str):  # noqa: ANN202
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
            if name not in calls:
                found = main_input(args, kwargs)
                if snapshot:
                    args, kwargs = before[name]
                calls[name] = Call(found[1].detach() if found else None, _detached(main_output(out)),
                                   args, dict(kwargs), snapshot)
        return hook

    try:
        for name, module in modules.items():
            if snapshot:
                handles.append(module.register_forward_pre_hook(pre_hook_for(name), with_kwargs=True))
            handles.append(module.register_forward_hook(hook_for(name), with_kwargs=True))
        yield calls
    finally:
        for h in handles:
            h.remove()


def _detached(x: torch.Tensor | None) -> torch.Tensor | None:
    return None if x is None else x.detach()
