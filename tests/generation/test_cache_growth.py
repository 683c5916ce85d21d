"""KV cache bytes: exact growth per token, and nothing left alive (or growing) between generate calls.

Memory measurement on CPU: torch's CPU allocator has no peak counter (tracemalloc sees only Python
objects), so the CPU test counts what generation itself keeps: every KVCache the model hands out is
tracked by weakref, and the bytes held by live caches are sampled at every forward. On CUDA the
allocator's own peak (`torch.cuda.max_memory_allocated`) is compared as well.
"""

from __future__ import annotations

import weakref

import pytest
import torch
from genmodels import padded_batch, tiny_model

from workbench import KVCache
from workbench.generation import GenerationSession, generate

GQA = dict(n_layers=3, n_heads=4, n_kv_heads=2, d_model=64)  # L=3, K=2, D=16


def _expected_bytes_per_token(dtype: torch.dtype) -> int:
    layers, kv_heads, head_dim = 3, 2, 16  # written out, not read from the cache under test
    return 2 * layers * kv_heads * head_dim * (torch.finfo(dtype).bits // 8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_growing_cache_allocates_exactly_per_token_per_sequence(dtype):
    model = tiny_model("tiny", **GQA).to(dtype)
    per_token = _expected_bytes_per_token(dtype)
    ids, mask = padded_batch()
    B, T = ids.shape
    cache = model.new_cache(B, T + 5, mode="growing")
    with torch.no_grad():
        model(ids, attention_mask=mask, cache=cache)
        assert cache.bytes_allocated == per_token * T * B  # real tensor nbytes
        for _ in range(5):
            before = cache.bytes_allocated
            model(torch.zeros(B, 1, dtype=torch.long), cache=cache, validate=False)
            assert cache.bytes_allocated - before == per_token * B
            assert cache.bytes_used == cache.bytes_allocated
    assert cache.layer_bytes_allocated() == [per_token // 3 * (T + 5) * B] * 3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_static_cache_use_grows_per_token_inside_a_fixed_allocation(dtype):
    model = tiny_model("tiny", **GQA).to(dtype)
    per_token = _expected_bytes_per_token(dtype)
    cache = model.new_cache(2, 40)
    assert cache.bytes_allocated == per_token * 40 * 2
    with torch.no_grad():
        model(torch.ones(2, 4, dtype=torch.long), cache=cache)
        for step in range(3):
            model(torch.ones(2, 1, dtype=torch.long), cache=cache, validate=False)
            assert cache.bytes_used == per_token * (4 + step + 1) * 2
    assert cache.bytes_allocated == per_token * 40 * 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_session_records_show_the_growth_per_step(chars, dtype):
    model = tiny_model("tiny", **GQA).to(dtype)
    session = GenerationSession(model, chars, "abc", eos_token_id=None)
    used = [sum(r.cache_bytes_used) for r in session.run(6)]
    assert [b - a for a, b in zip(used, used[1:])] == [_expected_bytes_per_token(dtype)] * 5


class CacheWatch:
    """Tracks every cache `model.new_cache` returns (weakly) and samples live cache bytes per forward."""

    def __init__(self, model) -> None:
        self.refs: list[weakref.ref] = []
        self.samples: list[int] = []
        self.model, self.original = model, model.new_cache
        model.new_cache = self._new_cache
        self.handle = model.register_forward_pre_hook(lambda *_: self.samples.append(self.live_bytes()))

    def _new_cache(self, *args, **kwargs) -> KVCache:
        cache = self.original(*args, **kwargs)
        self.refs.append(weakref.ref(cache))
        return cache

    def live_bytes(self) -> int:
        return sum(c.bytes_allocated for c in (r() for r in self.refs) if c is not None)

    def peak_of(self, fn) -> int:
        self.samples.clear()
        fn()
        return max(self.samples)

    def close(self) -> None:
        self.handle.remove()
        del self.model.new_cache  # back to the class method


@pytest.mark.parametrize("kwargs", [dict(), dict(num_beams=3), dict(do_sample=True, seed=0)])
def test_second_generate_call_peaks_no_higher_and_frees_its_cache(kwargs):
    model = tiny_model("tiny")
    ids, mask = padded_batch()
    attributes, hooks = set(vars(model)), sum(len(m._forward_hooks) for m in model.modules())
    watch = CacheWatch(model)
    try:
        call = lambda: generate(model, ids, attention_mask=mask, max_new_tokens=30, **kwargs)  # noqa: E731
        first = watch.peak_of(call)
        # checked before any gc.collect(): the cache must die by refcount, not linger in a cycle
        assert watch.live_bytes() == 0 and all(r() is None for r in watch.refs), "a cache outlived generate"
        second = watch.peak_of(call)
    finally:
        watch.close()
    assert first > 0
    assert second <= first
    assert set(vars(model)) == attributes
    assert sum(len(m._forward_hooks) for m in model.modules()) == hooks


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA peak memory needs a GPU")
def test_second_generate_call_cuda_peak_is_not_higher():
    model = tiny_model("tiny").cuda()
    ids, mask = (t.cuda() for t in padded_batch())
    peaks = []
    for _ in range(2):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        generate(model, ids, attention_mask=mask, max_new_tokens=60, num_beams=2)
        torch.cuda.synchronize()
        peaks.append(torch.cuda.max_memory_allocated())
    assert peaks[1] <= peaks[0]


def test_generate_restores_train_mode_and_records_no_graph():
    model = tiny_model("tiny", dropout=0.1).train()
    out = generate(model, torch.tensor([[1, 2, 3]]), max_new_tokens=5)
    assert model.training  # restored
    assert not out.sequences.requires_grad
    again = generate(model, torch.tensor([[1, 2, 3]]), max_new_tokens=5)
    assert torch.equal(out.sequences, again.sequences)  # eval mode inside: dropout off, deterministic


def test_generate_and_session_restore_each_module_mode_exactly(chars):
    """A mixed-mode model (trained, one block frozen in eval) runs fully in eval mode inside generate
    and a session step, and comes back module by module as it was, not flattened to the root's mode."""
    from workbench.generation import GenerationSession

    model = tiny_model("tiny", dropout=0.1).train()
    model.blocks[0].eval()
    before = {name: m.training for name, m in model.named_modules()}
    seen: list[bool] = []
    handle = model.blocks[1].drop.register_forward_pre_hook(lambda m, a: seen.append(m.training))
    try:
        generate(model, torch.tensor([[1, 2, 3]]), max_new_tokens=3)
        session = GenerationSession(model, chars, "ab", eos_token_id=None)
        assert {name: m.training for name, m in model.named_modules()} == before
        session.step()
    finally:
        handle.remove()
    assert seen and not any(seen)  # dropout ran in eval mode every time
    assert {name: m.training for name, m in model.named_modules()} == before
    assert model.training and not model.blocks[0].training and model.blocks[1].training
