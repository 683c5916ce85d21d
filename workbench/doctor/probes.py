"""Observation tools shared by checks: a module stack from forward hooks, and a `TorchFunctionMode` that
sees every torch call made inside one forward (matmuls, host syncs, device transfers). Attention itself
is observed through `workbench.lm.observe`, as capture and the session observe it.

The hooks and the mode exist only inside `observe(...)`; every handle is removed in `finally`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode


class ModuleStack:
    """The chain of modules currently running, maintained by forward pre/post hooks on every module."""

    def __init__(self, model: nn.Module) -> None:
        self.names = {id(m): n for n, m in model.named_modules()}
        self.stack: list[tuple[str, nn.Module]] = []
        self._handles: list[Any] = []
        for m in model.modules():
            self._handles.append(m.register_forward_pre_hook(self._push))
            self._handles.append(m.register_forward_hook(self._pop, always_call=True))

    def _push(self, m: nn.Module, _args: tuple) -> None:
        self.stack.append((self.names.get(id(m), "?"), m))

    def _pop(self, _m: nn.Module, _args: tuple, _out: Any) -> None:
        if self.stack:
            self.stack.pop()

    @property
    def current(self) -> str:
        """Path of the innermost running module ("" for the root, "(outside)" when none runs)."""
        return self.stack[-1][0] if self.stack else "(outside)"

    @property
    def current_module(self) -> nn.Module | None:
        return self.stack[-1][1] if self.stack else None

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


class CallWatcher(TorchFunctionMode):
    """Calls `on_call(func, args, kwargs, result)` after every torch function/method inside the mode."""

    def __init__(self, on_call: Callable[[Any, tuple, dict, Any], None]) -> None:
        super().__init__()
        self.on_call = on_call

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        self.on_call(func, args, kwargs, result)  # the mode is off while it handles a call: not re-entered
        return result


@contextlib.contextmanager
def observe(model: nn.Module, on_call: Callable[[ModuleStack, Any, tuple, dict, Any], None]) -> Iterator[ModuleStack]:
    """Inside the block, `on_call(stack, func, args, kwargs, result)` sees each torch call with the
    module stack at that moment."""
    stack = ModuleStack(model)
    try:
        with CallWatcher(lambda f, a, k, r: on_call(stack, f, a, k, r)):
            yield stack
    finally:
        stack.remove()


def _first_tensor(obj: Any) -> torch.Tensor | None:
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, (tuple, list)) and obj:
        return _first_tensor(obj[0])
    return getattr(obj, "last_hidden_state", None) if not isinstance(obj, dict) else None


def attribution_sites(model: nn.Module, blocks: list[tuple[str, nn.Module]] | None) -> list[tuple[str, nn.Module]]:
    """Modules a divergence is attributed to: each block and its direct children (attention, MLP, norms), and
    the modules outside the blocks (embeddings, final norm, head); not the insides of attention, where every
    projection after the faulty step would be blamed first."""
    inside = {id(m) for _, b in blocks or [] for m in b.modules()}
    sites = [(n, m) for n, m in model.named_modules() if id(m) not in inside and n]
    for name, block in blocks or []:
        sites.append((name, block))
        sites.extend((f"{name}.{c}", m) for c, m in block.named_children())
    return sites


def first_divergence(sites: list[tuple[str, nn.Module]], run_a: Callable[[], Any], run_b: Callable[[], Any],
                     pick_a: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
                     pick_b: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> tuple[str, float] | None:
    """The first module, in the order modules finish, whose output differs between two forwards beyond float
    noise, with the largest |delta|; None when none does. pick_a / pick_b select the positions to compare from
    each output (B, T, ...), e.g. the real tokens of a padded sequence."""
    outs: list[list[tuple[str, torch.Tensor]]] = [[], []]
    handles = []

    def keep(name: str, run: int) -> Callable[..., None]:
        def hook(_m: nn.Module, _args: tuple, out: Any) -> None:
            t = _first_tensor(out)
            if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dim() >= 2:
                outs[run].append((name, t.detach().float()))
        return hook

    for run, call in enumerate((run_a, run_b)):
        try:
            handles = [m.register_forward_hook(keep(n, run)) for n, m in sites]
            call()
        finally:
            for h in handles:
                h.remove()
    later = dict(outs[1])
    for name, a in outs[0]:
        b = later.get(name)
        if b is None:
            continue
        a, b = pick_a(a), pick_b(b)
        if a.shape != b.shape:
            continue
        delta = float((a - b).abs().max())
        if not delta <= 1e-4 * max(1.0, float(a.abs().max())):
            return name, delta
    return None
