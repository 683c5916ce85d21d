"""Hook hygiene: nothing stays attached, nothing stacks, the model's own state is restored."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import workbench
from workbench.capture import detach_all, trace


def _hook_count(model: nn.Module) -> int:
    """Module hooks on the model plus process-wide module hooks (the trace uses the latter)."""
    glob = nn.modules.module
    own = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    return own + len(glob._global_forward_hooks) + len(glob._global_forward_pre_hooks)


def _param_hook_count(model: nn.Module) -> int:
    return sum(len(p._post_accumulate_grad_hooks or {}) for p in model.parameters())


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_hooks_removed_after_exception(tiny, exc):
    before = _hook_count(tiny)
    with pytest.raises(exc), trace(tiny, memory=True, attention=True, gradients=True) as tr:
        tiny(torch.randint(0, 256, (1, 4)))
        assert _hook_count(tiny) > before
        raise exc()
    assert _hook_count(tiny) == before
    assert _param_hook_count(tiny) == 0
    assert len(tr.records) > 0  # what ran before the error is still there
    with trace(tiny) as again:  # the model is free for a new trace
        tiny(torch.randint(0, 256, (1, 4)))
    assert len(again.records) == len(tr.records)


def test_exception_inside_a_module_keeps_the_stack_balanced():
    class Boom(nn.Module):
        def forward(self, x):
            raise ValueError("bad input")

    model = nn.Sequential(nn.Linear(2, 2), Boom())
    with pytest.raises(ValueError), trace(model) as tr:
        model(torch.randn(1, 2))
    assert [r.finished for r in tr.records] == [False, True, False]
    assert _hook_count(model) == 0


def test_rerunning_a_cell_never_stacks(mlp):
    counts = []
    for _ in range(3):
        with trace(mlp) as tr:
            mlp(torch.randn(1, 8))
            counts.append(_hook_count(mlp))
        assert len(tr.records) == 4
    assert counts[0] == counts[1] == counts[2] and _hook_count(mlp) == 0


def test_user_hooks_untouched(mlp):
    seen = []
    h = mlp[0].register_forward_hook(lambda m, a, o: seen.append(o.shape))
    try:
        with trace(mlp):
            mlp(torch.randn(3, 8))
        mlp(torch.randn(3, 8))
        assert seen == [torch.Size([3, 16])] * 2
        assert len(mlp[0]._forward_hooks) == 1
    finally:
        h.remove()


def test_modes_and_requires_grad_restored(mlp):
    mlp.train()
    mlp[2].eval()
    mlp[0].weight.requires_grad_(False)
    with trace(mlp, gradients=True):
        mlp.eval()
        mlp[0].weight.requires_grad_(True)
        mlp(torch.randn(2, 8))
    assert mlp.training and mlp[0].training and not mlp[2].training
    assert not mlp[0].weight.requires_grad and mlp[2].weight.requires_grad


def test_nested_trace_on_same_module_is_refused(mlp):
    with trace(mlp) as outer:
        with pytest.raises(workbench.CaptureError, match="already attached"):
            with trace(mlp[0]):
                pass
        mlp(torch.randn(1, 8))
    assert len(outer.records) == 4 and _hook_count(mlp) == 0


def test_nested_traces_on_different_models_both_record(mlp, hf_gpt2):
    ids = torch.randint(0, 128, (1, 5))
    with trace(hf_gpt2, attention=True) as outer:
        with trace(mlp) as inner:
            mlp(torch.randn(1, 8))
        hf_gpt2(ids)
    assert len(inner.records) == 4 and len(outer.attention) == 2


def test_detach_all_clears_a_trace_left_open(mlp):
    tr = trace(mlp)
    tr.__enter__()  # as if a cell was interrupted between enter and exit
    assert _hook_count(mlp) > 0
    with pytest.raises(workbench.CaptureError, match="detach_all"):
        trace(mlp).__enter__()
    assert detach_all(mlp) == 1
    assert _hook_count(mlp) == 0
    with trace(mlp) as fresh:
        mlp(torch.randn(1, 8))
    assert len(fresh.records) == 4


def test_trace_object_is_single_use_and_rejects_non_modules(mlp):
    tr = trace(mlp)
    with tr:
        mlp(torch.randn(1, 8))
    with pytest.raises(workbench.CaptureError, match="already used"):
        tr.__enter__()
    with pytest.raises(workbench.CaptureError, match="nn.Module"):
        trace(lambda x: x)


def _global_hook_count() -> int:
    glob = nn.modules.module
    return len(glob._global_forward_hooks) + len(glob._global_forward_pre_hooks)


def test_few_recorded_modules_are_hooked_each_and_record_what_the_process_wide_hooks_record(hf_llama, monkeypatch):
    """Recording a quarter of the modules or fewer hooks those modules only (no process-wide hook, so the
    others keep nn.Module's fast path), and the records are those of the process-wide pair, stats included."""
    from workbench.capture import hooks

    layers = r"^model\.layers\.\d+$"
    ids = torch.randint(0, 128, (2, 6))
    seen = []
    with trace(hf_llama, modules=layers) as each:
        seen.append((_global_hook_count(), sum(len(m._forward_hooks) for m in hf_llama.model.layers)))
        hf_llama(ids)
    assert seen == [(0, 2 * len(hf_llama.model.layers))]
    monkeypatch.setattr(hooks.Recorder, "_hooks_each", lambda self, intercept, named: False)
    with trace(hf_llama, modules=layers) as wide:
        assert _global_hook_count() == 2
        hf_llama(ids)
    assert _hook_count(hf_llama) == 0
    assert [(r.name, r.call, r.depth, r.finished) for r in each.records] == \
           [(r.name, r.call, r.depth, r.finished) for r in wide.records]
    assert [r.name for r in each.records] == [f"model.layers.{i}" for i in range(len(hf_llama.model.layers))]
    assert [(r.inputs, r.outputs, r.out_stats, r.in_stats) for r in each.records] == \
           [(r.inputs, r.outputs, r.out_stats, r.in_stats) for r in wide.records]


def test_a_module_hooked_each_that_raises_is_recorded_unfinished_and_unhooked():
    class Boom(nn.Module):
        def forward(self, x):
            raise ValueError("bad input")

    class NoneOut(nn.Module):  # a module may return None; that is not a failure
        def forward(self, x):
            return None

    model = nn.Sequential(*[nn.Linear(2, 2) for _ in range(10)], NoneOut(), Boom())
    with pytest.raises(ValueError), trace(model, modules=["9", "10", "11"]) as tr:
        assert _global_hook_count() == 0  # 3 of 13 modules: hooked each
        model(torch.randn(1, 2))
    assert [(r.name, r.finished) for r in tr.records] == [("9", True), ("10", True), ("11", False)]
    assert tr.records[1].outputs == [] and tr.records[0].outputs[0].shape == [1, 2]
    assert _hook_count(model) == 0
