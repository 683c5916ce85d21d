"""`compile_model`: the inductor-compiled forward matches eager, hooks force eager, and any compiler
failure warns once and still returns the eager logits."""

from __future__ import annotations

import subprocess

import pytest
import torch

import workbench as wb
from workbench.model import compile as compile_mod
from workbench.model.compile import compile_model

# Failures that mean "this machine cannot compile", not "the workbench broke": skip on these only.
BACKEND_ERRORS = (
    "BackendCompilerFailed",
    "InductorError",
    "CppCompileError",
    "CalledProcessError",
    "InvalidCxxCompiler",
)


@pytest.fixture(scope="module")
def tiny() -> wb.TransformerLM:
    torch.manual_seed(0)
    return wb.TransformerLM(wb.ModelConfig.preset("tiny")).eval()


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, 256, (2, 12), generator=g)
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, :3] = 0
    return ids, mask


def test_inductor_forward_matches_eager(tiny):
    """Compiles the tiny model with inductor on the CPU (needs a C++ compiler; ~5-20 s the first time)."""
    dynamo = pytest.importorskip("torch._dynamo", reason="torch._dynamo is unavailable")
    if not dynamo.is_dynamo_supported():
        pytest.skip("torch.compile is not supported on this Python/platform")
    ids, mask = _inputs()
    wrapper = compile_model(tiny)
    with torch.no_grad():
        out = wrapper(ids, attention_mask=mask)
        expected = tiny(ids, attention_mask=mask)
    if not wrapper.compiled:
        name = type(wrapper.error).__name__
        if name in BACKEND_ERRORS or isinstance(wrapper.error, (subprocess.CalledProcessError, OSError)):
            pytest.skip(f"inductor cannot compile on this machine: {name}: {wrapper.error}")
        raise AssertionError(f"compile fell back for a non-backend reason: {wrapper.error!r}")
    assert wrapper.last_route == "compiled" and wrapper.compiled_calls == 1
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_compile_failure_at_wrap_time_warns_and_runs_eager(tiny, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.warns(RuntimeWarning, match="torch.compile failed .*no compiler here"):
        wrapper = compile_model(tiny)
    ids, mask = _inputs()
    with torch.no_grad():
        out = wrapper(ids, attention_mask=mask)
        expected = tiny(ids, attention_mask=mask)
    assert not wrapper.compiled and wrapper.last_route == "eager"
    assert torch.equal(out, expected)


def test_compile_failure_at_first_call_warns_once_and_keeps_the_cache_right(tiny, monkeypatch):
    """Dynamo compiles lazily: a failure surfaces at the first call and must fall back there."""
    calls = []

    def lazily_broken(fn, **kwargs):
        def run(*args):
            calls.append(1)
            raise RuntimeError("Dynamo exploded")

        return run

    monkeypatch.setattr(torch, "compile", lazily_broken)
    wrapper = compile_model(tiny)
    ids, mask = _inputs()
    with torch.no_grad(), pytest.warns(RuntimeWarning, match="Dynamo exploded"):
        out = wrapper(ids, attention_mask=mask)
    with torch.no_grad():
        again = wrapper(ids, attention_mask=mask)  # no second attempt, no second warning
        expected = tiny(ids, attention_mask=mask)
    assert calls == [1] and not wrapper.compiled
    assert torch.equal(out, expected) and torch.equal(again, expected)
    with pytest.raises(wb.InputError):
        wrapper(torch.full((1, 3), 10_000))  # bad input still raises the workbench's own error


def test_hooks_and_caches_run_the_eager_forward(tiny, monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: lambda *a: pytest.fail("compiled forward ran"))
    wrapper = compile_model(tiny)
    ids, _ = _inputs()
    seen = []
    handle = tiny.blocks[0].hook_resid_post.register_forward_hook(lambda m, a, out: seen.append(out.shape))
    try:
        with torch.no_grad():
            out = wrapper(ids)
    finally:
        handle.remove()
    assert seen == [torch.Size([2, 12, 64])] and wrapper.last_route == "eager"
    cache = tiny.new_cache(2, 16)
    with torch.no_grad():
        wrapper(ids, cache=cache)
    assert cache.length == 12 and wrapper.last_route == "eager"
    with torch.no_grad():
        torch.testing.assert_close(out, tiny(ids), atol=0, rtol=0)
    assert wrapper.config is tiny.config and wrapper.new_cache(1, 4).max_len == 4  # stands in for the model


def test_refuses_other_modules():
    with pytest.raises(wb.ConfigError, match="TransformerLM"):
        compile_mod.compile_model(torch.nn.Linear(2, 2))
