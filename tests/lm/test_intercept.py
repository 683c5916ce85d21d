"""The interception layer: module and function events carry their owner, editors replace what they see, clients
compose in order, and nothing is left hooked afterwards, whatever the block raised."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests import hfzoo
from workbench.errors import InterventionError
from workbench.lm.intercept import ALL_FUNCTIONS, Client, ModuleCall, innermost, intercept


class Scale(Client):
    def __init__(self, names: list[str] | None, factor: float) -> None:
        self.modules, self.factor = names, factor

    def module_output(self, call: ModuleCall) -> torch.Tensor | None:
        out = call.output
        return out * self.factor if isinstance(out, torch.Tensor) else None


class Seen(Client):
    functions = ALL_FUNCTIONS

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None]] = []

    def function(self, call):  # noqa: ANN001, ANN201
        self.calls.append((call.name, call.module))
        return call.proceed()


def _hooks() -> tuple[int, int]:
    mod = nn.modules.module
    return len(mod._global_forward_hooks), len(mod._global_forward_pre_hooks)


@pytest.fixture(scope="module")
def llama() -> nn.Module:
    return hfzoo.build("llama").eval()


IDS = torch.tensor([[5, 9, 3, 7, 11, 2]])


def test_a_module_output_edit_equals_the_edit_done_by_hand(llama):
    mlp = llama.model.layers[0].mlp
    keep: list[torch.Tensor] = []
    handle = mlp.register_forward_hook(lambda _m, _a, out: out * 0.5)
    try:
        expected = llama(IDS).logits
    finally:
        handle.remove()
    with torch.no_grad(), intercept(llama, Scale(["model.layers.0.mlp"], 0.5)):
        got = llama(IDS).logits
    assert torch.equal(got, expected.detach())
    assert not keep and not mlp._forward_hooks  # nothing left on the module


def test_per_module_and_process_wide_hooks_give_the_same_edit(llama):
    with torch.no_grad(), intercept(llama, Scale(["model.layers.1.self_attn"], 0.0)):
        few = llama(IDS).logits
    # a function observer needs the running-module stack, which switches to the process-wide hooks
    seen = Seen()
    with torch.no_grad(), intercept(llama, Scale(["model.layers.1.self_attn"], 0.0), seen):
        wide = llama(IDS).logits
    assert torch.equal(few, wide)
    owners = {m for _, m in seen.calls}
    assert "model.layers.1.self_attn" in owners and "model.layers.0.mlp.act_fn" in owners


def test_function_editors_compose_in_client_order(llama):
    class Twice(Client):
        functions = ("silu",)

        def function(self, call):  # noqa: ANN001, ANN201
            return call.proceed() * 2

    class Plus(Client):
        functions = ("silu",)

        def function(self, call):  # noqa: ANN001, ANN201
            return call.proceed(call.args[0] + 1)

    x = torch.randn(3)

    class Tiny(nn.Module):
        def forward(self, x):  # noqa: ANN001, ANN201
            return F.silu(x)

    tiny, expected = Tiny(), F.silu(x + 1) * 2
    with intercept(tiny, Twice(), Plus()):
        first = tiny(x)
    with intercept(tiny, Plus(), Twice()):
        second = tiny(x)
    assert torch.equal(first, expected) and torch.equal(second, expected)  # the rewritten input reaches torch
    assert torch.equal(tiny(x), F.silu(x))


def test_edits_compose_and_nest(llama):
    base = llama(IDS).logits
    with torch.no_grad(), intercept(llama, Scale(["model.layers.0.mlp"], 2.0)):
        outer = llama(IDS).logits
        with intercept(llama, Scale(["model.layers.0.mlp"], 0.5)) as inner:
            assert innermost() is inner
            both = llama(IDS).logits
        assert torch.equal(llama(IDS).logits, outer)
    assert torch.allclose(both, base, atol=1e-6)
    assert not torch.allclose(outer, base)


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_nothing_stays_hooked_when_the_block_raises(llama, error):
    base = llama(IDS).logits
    before = _hooks()

    class Boom(Client):
        modules = None

        def module_output(self, call):  # noqa: ANN001, ANN201
            if call.name == "model.layers.1.mlp":
                raise error("stop")
            return None

    with pytest.raises(error), intercept(llama, Boom(), Seen(), Scale(["model.norm"], 3.0)):
        llama(IDS)
    assert _hooks() == before and innermost() is None
    assert torch.equal(llama(IDS).logits, base)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in llama.modules())


def test_an_unknown_module_name_is_refused_with_a_suggestion(llama):
    with pytest.raises(InterventionError, match=r"no module named 'model\.layer\.0\.mlp'.*model\.layers\.0\.mlp"):
        with intercept(llama, Scale(["model.layer.0.mlp"], 1.0)):
            pass
    assert _hooks() == (0, 0)


def test_each_call_of_a_module_is_counted(llama):
    calls: list[int] = []

    class Count(Client):
        modules = ("model.layers.0",)

        def module_output(self, call):  # noqa: ANN001, ANN201
            calls.append(call.call)

    with torch.no_grad(), intercept(llama, Count()):
        llama(IDS)
        llama(IDS)
    assert calls == [0, 1]


def test_a_first_interception_edits_ahead_of_hooks_registered_before_it(llama):
    """An observer's process-wide hook registered before an editor sees the edited output only when the
    editor's interception is `first` (a trace opened around an edit records what the edit wrote)."""
    seen: list[torch.Tensor] = []

    def observe(module: nn.Module, _args: tuple, out: torch.Tensor) -> None:
        if module is llama.model.layers[0].mlp:
            seen.append(out)

    handle = nn.modules.module.register_module_forward_hook(observe)
    try:
        with torch.no_grad():
            with intercept(llama, Scale(["model.layers.0.mlp"], 0.0)):
                llama(IDS)
            with intercept(llama, Scale(["model.layers.0.mlp"], 0.0), first=True):
                with intercept(llama, Scale(["model.layers.0.mlp"], 2.0), first=True):
                    llama(IDS)
    finally:
        handle.remove()
    assert bool(seen[0].abs().max() > 0) and torch.equal(seen[1], torch.zeros_like(seen[1]))
    assert _hooks() == (0, 0)
