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

class Stored(Client):
    """Replaces the named modules' calls with stored outputs, counting the forwards it saw asked for."""

    def __init__(self, outputs: dict[str, object]) -> None:
        self.modules, self.outputs, self.asked = tuple(outputs), outputs, []

    def module_call(self, call: ModuleCall) -> object:
        self.asked.append((call.name, call.call))
        return self.outputs[call.name]


def test_a_replaced_call_skips_the_forward_and_returns_the_stored_output(llama):
    layer = llama.model.layers[0]
    kept: dict[str, torch.Tensor] = {}
    handle = layer.register_forward_hook(lambda _m, _a, out: kept.setdefault("out", out))
    try:
        base = llama(IDS).logits
    finally:
        handle.remove()
    ran: list[int] = []
    inner = layer.mlp.register_forward_hook(lambda *_: ran.append(1))  # runs only if the block's forward does
    try:
        stored = Stored({"model.layers.0": kept["out"]})
        with torch.no_grad(), intercept(llama, stored, Scale(["model.layers.0"], 1.0)):
            same = llama(IDS).logits
        assert not ran and stored.asked == [("model.layers.0", 0)]
        assert torch.equal(same, base)  # the stored output is exactly what the forward gave
        with torch.no_grad(), intercept(llama, Stored({"model.layers.0": kept["out"] * 0})):
            zeroed = llama(IDS).logits
        layer.forward = lambda *a, **k: torch.zeros_like(a[0])  # type: ignore[method-assign]
        try:
            expected = llama(IDS).logits  # the same replacement written by hand
        finally:
            del layer.forward
        assert torch.equal(zeroed, expected) and not ran
    finally:
        inner.remove()
    assert "forward" not in layer.__dict__ and torch.equal(llama(IDS).logits, base)  # the class forward again


def test_a_replaced_call_passes_through_editors_and_none_runs_the_forward(llama):
    base = llama(IDS).logits

    class Never(Client):
        modules = ("model.layers.1",)

        def module_call(self, call):  # noqa: ANN001, ANN201
            return None

    with torch.no_grad(), intercept(llama, Never(), Scale(["model.layers.1"], 2.0)):
        doubled = llama(IDS).logits
    with torch.no_grad(), intercept(llama, Scale(["model.layers.1"], 2.0)):
        expected = llama(IDS).logits
    assert torch.equal(doubled, expected) and not torch.equal(doubled, base)


def test_a_replaced_call_can_run_the_forward_beneath_on_other_inputs(llama):
    """`call.forward` runs the module itself, without the interception's hooks or replacement again: a client
    that runs a block on its first row only and copies that row to the second gives the first row's logits
    twice, and the hooks see one call of the block, not two."""

    class FirstRow(Client):
        modules = ("model.layers.1",)

        def module_call(self, call):  # noqa: ANN001, ANN201
            x = call.args[0] if call.args else call.kwargs["hidden_states"]
            kwargs = {k: v for k, v in call.kwargs.items() if k != "hidden_states"}
            mask = kwargs.get("attention_mask")
            if isinstance(mask, torch.Tensor) and mask.shape[0] == 2:
                kwargs["attention_mask"] = mask[:1]
            out = call.forward(x[:1], *call.args[1:], **kwargs)
            return torch.cat((out, out))

    class Count(Client):
        modules = ("model.layers.1",)
        calls = 0

        def module_output(self, call):  # noqa: ANN001, ANN201
            Count.calls += 1

    pair = torch.stack((IDS[0], IDS[0].flip(0)))  # (2, T): two different rows
    with torch.no_grad(), intercept(llama, FirstRow(), Count()):
        both = llama(pair).logits
    with torch.no_grad():
        alone = llama(pair[:1]).logits
    torch.testing.assert_close(both[1], alone[0], rtol=1e-5, atol=1e-5)  # row 1 carries row 0's block output on
    assert not torch.allclose(both[1], llama(pair[1:]).logits[0], atol=1e-3)  # not what row 1 gives alone
    assert Count.calls == 1


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_replaced_forward_is_restored_when_the_block_raises(llama, error):
    class Boom(Client):
        modules = ("model.layers.0", "model.norm")

        def module_call(self, call):  # noqa: ANN001, ANN201
            raise error("stop")

    base = llama(IDS).logits
    with pytest.raises(error), intercept(llama, Boom(), Seen()):
        llama(IDS)
    assert all("forward" not in m.__dict__ for m in llama.modules())
    assert torch.equal(llama(IDS).logits, base) and _hooks() == (0, 0)
