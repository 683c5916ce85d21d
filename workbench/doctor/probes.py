"""Observation tools shared by checks: a module stack from forward hooks, and a `TorchFunctionMode` that
sees every torch call made inside one forward (attention scores, host syncs, device transfers).

The hooks and the mode exist only inside `observe(...)`; every handle is removed in `finally`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..capture.attention import sdpa_arguments

SOFTMAXES = {torch.softmax, F.softmax, torch.Tensor.softmax}
SDPA = F.scaled_dot_product_attention


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


def is_softmax(func: Any) -> bool:
    return func in SOFTMAXES


def sdpa_scores(args: tuple, kwargs: dict) -> torch.Tensor:
    """Pre-softmax scores (B, H, T, S) in float32 of one SDPA call, with its scale (default 1/sqrt(D))."""
    a = sdpa_arguments(args, kwargs)
    q, k = a["query"].float(), a["key"].float()
    if k.shape[-3] != q.shape[-3]:  # grouped-query attention: repeat each key head for its query group
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
    scale = a.get("scale") or q.shape[-1] ** -0.5
    return (q @ k.transpose(-2, -1)) * scale  # (B, H, T, S)
