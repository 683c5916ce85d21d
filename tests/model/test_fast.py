"""The fixed-shape decode step equals the plain cached forward, keeps the cache's bookkeeping, compiles
as one graph, and hands over to the plain forward whenever a hook or a trace listens."""

from __future__ import annotations

import pytest
import torch

import workbench as wb
from workbench.errors import InputError
from workbench.model import decoder as decoder_mod
from workbench.model.decoder import FastDecoder
from workbench.model.fast import CompiledStep, StaticSlots, decode_step, hooks_attached

STEPS = 10

CONFIGS = {
    "tiny": wb.ModelConfig.preset("tiny"),
    "gqa-rope": wb.ModelConfig.preset("tiny").replace(n_heads=6, n_kv_heads=2, d_model=96, rope_theta=500.0),
    "tiny-gpt2": wb.ModelConfig.preset("tiny-gpt2"),
}


def _model(name: str, device: str = "cpu") -> wb.TransformerLM:
    torch.manual_seed(0)
    return wb.TransformerLM(CONFIGS[name]).eval().to(device)


def _prompt(padded: bool, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor | None]:
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 256, (3, 7), generator=g)
    if not padded:
        return ids.to(device), None
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, :2] = 0
    mask[2, :4] = 0
    return ids.to(device), mask.to(device)


def _assert_same_cache(a: wb.KVCache, b: wb.KVCache) -> None:
    assert (a.length, a.masked, a.max_len) == (b.length, b.masked, b.max_len)
    assert torch.equal(a.key_mask, b.key_mask)
    assert (a.bytes_used, a.bytes_allocated) == (b.bytes_used, b.bytes_allocated)
    assert a.layer_bytes_used() == b.layer_bytes_used()
    L = a.length
    for ka, kb, va, vb in zip(a.keys, b.keys, a.values, b.values):
        torch.testing.assert_close(ka[:, :, :L], kb[:, :, :L], atol=1e-6, rtol=0)
        torch.testing.assert_close(va[:, :, :L], vb[:, :, :L], atol=1e-6, rtol=0)


def _run_both(model, ids, mask, step_fn_factory, device="cpu"):
    """Prefill two caches alike, then decode STEPS tokens (chosen by the plain path) through both."""
    plain_cache = model.new_cache(ids.shape[0], ids.shape[1] + STEPS + 3)
    fast_cache = model.new_cache(ids.shape[0], ids.shape[1] + STEPS + 3)
    with torch.no_grad():
        plain = model(ids, attention_mask=mask, cache=plain_cache)[:, -1]  # (B, V)
        model(ids, attention_mask=mask, cache=fast_cache)
        step = step_fn_factory(fast_cache)
        for _ in range(STEPS):
            token = plain.argmax(-1)[:, None]  # (B, 1)
            plain = model(token, cache=plain_cache, validate=False)[:, -1]
            fast = step(token)[:, -1]
            torch.testing.assert_close(fast, plain, atol=1e-5, rtol=0)
            _assert_same_cache(fast_cache, plain_cache)
    return step


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "left-padded"])
def test_fixed_shape_step_equals_plain_decode(name, padded):
    model = _model(name)
    ids, mask = _prompt(padded)
    decoder = _run_both(model, ids, mask, lambda cache: FastDecoder(model, cache, graphs=False))
    assert decoder.last_route == "eager" and decoder.captures == 0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gqa-rope", "tiny-gpt2"])
def test_compiled_step_equals_plain_decode(name):
    """fast="compile": inductor's fused step (C++ on the CPU, Triton on CUDA) gives the plain path's logits."""
    model = _model(name)
    ids, mask = _prompt(True)
    decoder = _run_both(model, ids, mask, lambda cache: FastDecoder(model, cache, graphs=False, compiled=True))
    assert decoder.step.error is None and decoder.step.calls == STEPS  # every step ran compiled code


@pytest.mark.slow
def test_compile_carrier_runs_the_compiled_step_and_its_graph_mode_matches_on_the_cpu():
    """carrier="compile" hands CUDA graphs to torch.compile(mode="reduce-overhead"); off CUDA the same
    mode only compiles, and both give the plain path's logits."""
    model = _model("gqa-rope")
    ids, mask = _prompt(True)
    decoder = _run_both(model, ids, mask, lambda cache: FastDecoder(model, cache, graphs=False, carrier="compile"))
    assert isinstance(decoder.step, CompiledStep) and decoder.step.calls == STEPS and decoder.last_route == "eager"

    def graph_mode(cache: wb.KVCache) -> FastDecoder:
        decoder = FastDecoder(model, cache, graphs=False, carrier="compile")
        decoder.step = CompiledStep(mode="reduce-overhead")  # what graphs=True selects on CUDA
        return decoder

    decoder = _run_both(model, ids, mask, graph_mode)
    assert decoder.step.error is None and decoder.step.calls == STEPS
    with pytest.raises(InputError, match="carrier='bogus'"):
        FastDecoder(model, model.new_cache(1, 8), carrier="bogus")


def test_compiled_step_failure_warns_once_and_decodes_eagerly(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    model = _model("tiny")
    ids, mask = _prompt(True)
    with pytest.warns(RuntimeWarning, match="compiled decode step is unavailable.*no compiler here") as caught:
        decoder = _run_both(model, ids, mask, lambda cache: FastDecoder(model, cache, graphs=False, compiled=True))
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1
    assert decoder.step.calls == 0 and "no compiler here" in str(decoder.step.error)


def test_positions_continue_per_row_under_left_padding():
    """RoPE positions come from the device key mask: a padded row's next position is its own token count."""
    model = _model("tiny")
    ids, mask = _prompt(padded=True)
    cache = model.new_cache(3, 12)
    seen = []
    with torch.no_grad():
        model(ids, attention_mask=mask, cache=cache)
        handle = model.rotary.register_forward_hook(lambda m, args, out: seen.append(args[0].clone()))
        try:
            slots = StaticSlots(cache)
            slots.write_pos.fill_(cache.length)
            decode_step(model, torch.zeros(3, 1, dtype=torch.long), slots)
        finally:
            handle.remove()
    assert seen[0].tolist() == [[7], [5], [3]]  # 7, 5 and 3 real prompt tokens


def test_cache_reallocation_rebuilds_the_slots():
    model = _model("tiny")
    ids, _ = _prompt(padded=False)
    plain_cache, fast_cache = model.new_cache(3, 8), model.new_cache(3, 8)
    with torch.no_grad():
        plain = model(ids, cache=plain_cache)[:, -1]
        model(ids, cache=fast_cache)
        decoder = FastDecoder(model, fast_cache, graphs=False)
        for _ in range(6):
            if fast_cache.length == fast_cache.max_len:  # full: grow both, as a session does
                fast_cache.resize(fast_cache.max_len + 4)
                plain_cache.resize(plain_cache.max_len + 4)
            token = plain.argmax(-1)[:, None]
            plain = model(token, cache=plain_cache, validate=False)[:, -1]
            torch.testing.assert_close(decoder(token)[:, -1], plain, atol=1e-5, rtol=0)
        _assert_same_cache(fast_cache, plain_cache)
        assert fast_cache.max_len == 16
        with pytest.raises(InputError, match="cannot take"):
            full = model.new_cache(3, 7)
            model(ids, cache=full)
            FastDecoder(model, full, graphs=False)(token)


def test_refuses_growing_cache_and_graphs_off_cuda():
    model = _model("tiny")
    with pytest.raises(InputError, match="static cache"):
        FastDecoder(model, model.new_cache(1, 8, mode="growing"))
    with pytest.raises(InputError, match="CUDA"):
        FastDecoder(model, model.new_cache(1, 8), graphs=True)


def test_hooks_route_to_the_plain_forward(monkeypatch):
    """A hook anywhere means the fixed-shape step (and so a CUDA graph) must not run."""
    model = _model("tiny")
    ids, _ = _prompt(padded=False)
    cache = model.new_cache(3, 12)
    with torch.no_grad():
        model(ids, cache=cache)
        decoder = FastDecoder(model, cache, graphs=False)
        fired = []
        handle = model.blocks[1].attn.hook_z.register_forward_hook(lambda *a: fired.append(1))
        monkeypatch.setattr(decoder_mod, "decode_step", lambda *a: pytest.fail("fixed-shape step ran under a hook"))
        try:
            assert decoder.route() == "plain"
            decoder(torch.ones(3, 1, dtype=torch.long))
        finally:
            handle.remove()
        assert fired == [1] and decoder.last_route == "plain" and cache.length == 8
        monkeypatch.undo()
        decoder(torch.ones(3, 1, dtype=torch.long))
        assert decoder.last_route == "eager" and cache.length == 9


def test_hooks_attached_sees_module_global_patched_and_trace_hooks(monkeypatch):
    model = _model("tiny")
    assert not hooks_attached(model)
    handle = model.register_forward_pre_hook(lambda *a: None)
    try:
        assert hooks_attached(model)
    finally:
        handle.remove()
    handle = torch.nn.modules.module.register_module_forward_hook(lambda *a: None)
    try:
        assert hooks_attached(model)
    finally:
        handle.remove()
    with monkeypatch.context() as patch:  # a trace intercepting SDPA swaps the function
        patch.setattr(torch.nn.functional, "scaled_dot_product_attention", lambda *a, **k: None)
        assert hooks_attached(model)
    assert not hooks_attached(model)
    ids = torch.randint(0, 256, (1, 4))
    with wb.capture.trace(model, shapes=True):
        assert hooks_attached(model)
        model(ids)
    with wb.capture.trace(model, attention=True, attention_source="intercept"):
        assert hooks_attached(model)
    assert not hooks_attached(model)


def test_step_compiles_as_one_graph_without_recompiling():
    """fullgraph=True fails on any graph break; one frame for all steps proves no per-step shapes."""
    dynamo = pytest.importorskip("torch._dynamo", reason="torch._dynamo is unavailable")
    if not dynamo.is_dynamo_supported():
        pytest.skip("torch.compile is not supported on this Python/platform")
    from torch._dynamo.testing import CompileCounterWithBackend

    dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    model = _model("gqa-rope")
    ids, mask = _prompt(padded=True)

    def factory(cache):
        slots = StaticSlots(cache)
        compiled = torch.compile(lambda token: decode_step(model, token, slots), backend=counter, fullgraph=True)

        def step(token):
            slots.write_pos.fill_(cache.length)
            out = compiled(token)
            cache.advance(1)
            return out

        return step

    _run_both(model, ids, mask, factory)
    assert counter.frame_count == 1
    dynamo.reset()


def test_graph_runner_refuses_a_cpu_cache():
    from workbench.model.graphs import GraphedDecodeStep

    model = _model("tiny")
    with pytest.raises(RuntimeError, match="CUDA graphs need a CUDA device"):
        GraphedDecodeStep(model, StaticSlots(model.new_cache(1, 8)), start=0)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "left-padded"])
def test_cuda_graph_replay_equals_plain_decode(padded):
    model = _model("gqa-rope", "cuda")
    ids, mask = _prompt(padded, "cuda")
    decoder = _run_both(model, ids, mask, lambda cache: FastDecoder(model, cache))
    assert decoder.last_route == "graph" and decoder.captures == 1


@cuda
def test_cuda_graph_of_the_compiled_step_equals_plain_decode():
    model = _model("gqa-rope", "cuda")
    ids, mask = _prompt(True, "cuda")
    decoder = _run_both(model, ids, mask, lambda cache: FastDecoder(model, cache, compiled=True))
    assert decoder.last_route == "graph" and decoder.captures == 1 and decoder.step.error is None


def _prefilled_on_cuda(max_len: int):
    """(model, plain cache, fast cache, last plain logits (B, V), FastDecoder) after the same prefill."""
    model = _model("tiny", "cuda")
    ids, _ = _prompt(False, "cuda")
    plain_cache, fast_cache = model.new_cache(3, max_len), model.new_cache(3, max_len)
    with torch.no_grad():
        plain = model(ids, cache=plain_cache)[:, -1]
        model(ids, cache=fast_cache)
    return model, plain_cache, fast_cache, plain, FastDecoder(model, fast_cache)


@cuda
def test_cuda_graph_recaptures_after_resize_and_skips_under_hooks():
    model, plain_cache, fast_cache, plain, decoder = _prefilled_on_cuda(8)
    with torch.no_grad():
        fired = []
        for i in range(5):
            if fast_cache.length == fast_cache.max_len:
                fast_cache.resize(12)
                plain_cache.resize(12)
            token = plain.argmax(-1)[:, None]
            plain = model(token, cache=plain_cache, validate=False)[:, -1]
            handle = model.hook_final.register_forward_hook(lambda *a: fired.append(1)) if i == 3 else None
            try:
                torch.testing.assert_close(decoder(token)[:, -1], plain, atol=1e-5, rtol=0)
            finally:
                if handle is not None:
                    handle.remove()
        _assert_same_cache(fast_cache, plain_cache)
    assert decoder.captures == 2 and fired == [1]


@cuda
def test_cuda_graph_recaptures_when_a_weight_is_replaced():
    model, plain_cache, fast_cache, plain, decoder = _prefilled_on_cuda(16)
    with torch.no_grad():
        for i in range(4):
            if i == 2:  # a new tensor, not an in-place edit: the captured graph would still read the old one
                model.blocks[0].mlp.down.weight.data = model.blocks[0].mlp.down.weight.data * 0.5
            token = plain.argmax(-1)[:, None]
            plain = model(token, cache=plain_cache, validate=False)[:, -1]
            torch.testing.assert_close(decoder(token)[:, -1], plain, atol=1e-5, rtol=0)
    assert decoder.captures == 2


def test_prefill_cached_decode_and_the_fixed_shape_step_all_run_the_one_trunk(monkeypatch):
    """The body (embedding, blocks, norm, head) exists once: every path only prepares its inputs."""
    model = _model("gqa-rope")
    calls: list[tuple[str, tuple[int, ...]]] = []
    trunk = wb.TransformerLM.trunk

    def counted(self, input_ids, positions, mask, cache):  # noqa: ANN001, ANN202
        calls.append((type(cache).__name__, tuple(input_ids.shape)))
        return trunk(self, input_ids, positions, mask, cache)

    monkeypatch.setattr(wb.TransformerLM, "trunk", counted)
    ids, mask = _prompt(True)
    cache = model.new_cache(3, 12)
    with torch.no_grad():
        model(ids, attention_mask=mask)
        model(ids, attention_mask=mask, cache=cache)
        FastDecoder(model, cache, graphs=False)(ids[:, -1:])
    assert calls == [("NoneType", (3, 7)), ("KVCache", (3, 7)), ("StaticSlots", (3, 1))]
