"""Observation tools shared by checks: a module stack from forward hooks, and a `TorchFunctionMode` that
sees every torch call made inside one forward (matmuls, host syncs, device transfers). Attention itself
is observed through `workbench.lm.observe`, as capture and the session observe it.

The hooks and the mode exist only inside `observe(...)`; every handle is removed in `finally`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

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
