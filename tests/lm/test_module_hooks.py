"""The layer's plain hooks (`module_hooks`, which capture's hot path uses) and the keyword arguments an input
editor sees when the layer runs on process-wide hooks: every call reported once, a raising forward reported
as such, and every hook removed on exit, also when the block raised."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from workbench.lm.intercept import ALL_FUNCTIONS, Client, ModuleCall, intercept, module_hooks


class Inner(nn.Module):
    def forward(self, x: torch.Tensor, *, bias: torch.Tensor) -> torch.Tensor:
        if bool((x < -100).any()):
            raise ValueError("too small")
        return x * 2 + bias


class Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = Inner()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x, bias=torch.ones_like(x)) + 1


def _global() -> tuple[int, int]:
    mod = nn.modules.module
    return len(mod._global_forward_hooks), len(mod._global_forward_pre_hooks)


class Log:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def pre(self, module: nn.Module, args: tuple) -> None:
        self.events.append(("pre", type(module).__name__))

    def post(self, module: nn.Module, args: tuple, *rest: object) -> None:
        self.events.append(("post" if len(rest) == 2 else "raised", type(module).__name__))


@pytest.mark.parametrize("each", [False, True])
def test_module_hooks_report_each_call_once_and_a_raise_as_such(each):
    model, log = Outer(), Log()
    modules = list(model.modules()) if each else None
    with module_hooks(log.pre, log.post, modules):
        model(torch.zeros(2))
        with pytest.raises(ValueError):
            model(torch.full((2,), -1000.0))
    assert log.events == [("pre", "Outer"), ("pre", "Inner"), ("post", "Inner"), ("post", "Outer"),
                          ("pre", "Outer"), ("pre", "Inner"), ("raised", "Inner"), ("raised", "Outer")]
    assert _global() == (0, 0) and not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_module_hooks_are_removed_when_the_block_raises():
    model, log = Outer(), Log()
    with pytest.raises(KeyboardInterrupt), module_hooks(log.pre, log.post, [model.inner]):
        raise KeyboardInterrupt
    with pytest.raises(RuntimeError), module_hooks(log.pre, log.post):
        raise RuntimeError
    assert _global() == (0, 0) and not model.inner._forward_hooks and not model.inner._forward_pre_hooks


class Halve(Client):
    """An input editor that halves the keyword `bias` of `inner`."""

    modules = ("inner",)

    def module_input(self, call: ModuleCall) -> tuple[tuple, dict] | None:
        return call.args, {**call.kwargs, "bias": call.kwargs["bias"] / 2}


class Every(Client):
    functions = ALL_FUNCTIONS


def test_an_input_editor_sees_keyword_arguments_on_the_process_wide_path_too():
    model, x = Outer(), torch.arange(3.0)
    expected = x * 2 + 0.5 + 1
    with intercept(model, Halve()):  # hooks on `inner` only
        alone = model(x)
    with intercept(model, Halve(), Every()) as scope:  # a function client needs the running-module stack
        assert _global() == (1, 1)
        wide = model(x)
    assert torch.equal(alone, expected) and torch.equal(wide, expected)
    assert scope.current is None and _global() == (0, 0) and not model.inner._forward_pre_hooks
