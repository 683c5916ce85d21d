"""`fast=` in `generate` and `GenerationSession`: the fixed-shape decode step gives the same tokens and the
same per-step cache statistics as the plain forward, and is refused where it cannot be honoured."""

from __future__ import annotations

import pytest
import torch
from genmodels import bigram_model

from workbench import GenerationError
from workbench.generation import GenerationSession, generate
from workbench.generation.fast import MIN_GRAPH_TOKENS, auto_fast, resolve_fast
from workbench.model import decoder as decoder_mod

PROMPTS = ["Once upon a time, in a small village by the sea,", "def fibonacci(n):"]


@pytest.fixture
def step_count(monkeypatch) -> list[int]:
    """Counts calls of the fixed-shape step, so a test fails if fast=True silently ran the plain path."""
    calls: list[int] = []
    real = decoder_mod.decode_step

    def counted(model, token, slots):
        calls.append(token.shape[0])
        return real(model, token, slots)

    monkeypatch.setattr(decoder_mod, "decode_step", counted)
    return calls


def _session_rows(session: GenerationSession, n: int) -> list[tuple]:
    return [
        (r.token_id, r.position, r.cache_length, r.cache_bytes_used, r.cache_bytes_allocated, r.candidate_ids)
        for r in session.run(n)
    ]


@pytest.mark.slow
def test_smollm2_greedy_generate_is_identical(smollm2, step_count):
    model, tok = smollm2
    enc = tok(PROMPTS)  # left-padded batch of two
    kwargs = dict(attention_mask=enc["attention_mask"], max_new_tokens=16)
    plain = generate(model, enc["input_ids"], fast=False, **kwargs)
    assert step_count == []
    fast = generate(model, enc["input_ids"], fast=True, **kwargs)
    assert step_count == [2] * 15  # every decode step after the prefill ran the fixed-shape step
    assert fast.new_tokens.tolist() == plain.new_tokens.tolist()
    assert fast.cache_bytes_allocated == plain.cache_bytes_allocated


@pytest.mark.slow
def test_smollm2_session_same_tokens_and_cache_statistics(smollm2, step_count):
    model, tok = smollm2
    plain = _session_rows(GenerationSession(model, tok, PROMPTS[1], fast=False, reserve=4), 10)
    session = GenerationSession(model, tok, PROMPTS[1], fast=True, reserve=4)  # resizes twice on the way
    fast = _session_rows(session, 10)
    assert len(step_count) == 10 and session.fast
    assert fast == plain
    assert session.cache.length == session.prompt_length + 10


def test_session_reset_and_resize_keep_records_equal(tiny, chars, step_count):
    plain_session = GenerationSession(tiny, chars, "hello there", fast=False, reserve=3)
    fast_session = GenerationSession(tiny, chars, "hello there", fast=True, reserve=3)
    for _ in range(2):  # the second round runs after reset(): the cache was truncated, not refilled
        plain, fast = plain_session.run(9), fast_session.run(9)
        assert [r.token_id for r in fast] == [r.token_id for r in plain]
        for a, b in zip(fast, plain):
            assert (a.cache_length, a.cache_bytes_used, a.cache_bytes_allocated) == (
                b.cache_length, b.cache_bytes_used, b.cache_bytes_allocated
            )  # fmt: skip
            assert a.candidate_probs == pytest.approx(b.candidate_probs, abs=1e-5)
            assert a.entropy == pytest.approx(b.entropy, abs=1e-5)
        plain_session.reset()
        fast_session.reset()
    assert len(step_count) == 18


def test_session_attention_capture_runs_the_plain_path(tiny, chars, step_count):
    plain = GenerationSession(tiny, chars, "hello", fast=False, capture_attention=True).run(4)
    fast = GenerationSession(tiny, chars, "hello", fast=True, capture_attention=True).run(4)
    assert step_count == []  # the attention hooks listen, so no step may skip them
    assert [r.token_id for r in fast] == [r.token_id for r in plain]
    for a, b in zip(fast, plain):
        torch.testing.assert_close(a.attention, b.attention, atol=0, rtol=0)


def test_sampled_generate_with_seed_is_identical(tiny, step_count):
    ids = torch.tensor([[5, 9, 2, 7], [1, 1, 3, 4]])
    kwargs = dict(max_new_tokens=12, do_sample=True, top_k=20, seed=7, num_return_sequences=2)
    plain = generate(tiny, ids, fast=False, **kwargs)
    fast = generate(tiny, ids, fast=True, **kwargs)
    assert len(step_count) == 11
    assert fast.new_tokens.tolist() == plain.new_tokens.tolist()


def test_auto_is_off_on_cpu_and_explicit_requests_are_checked(tiny):
    assert resolve_fast(tiny, None, "static") is False  # no CUDA here: auto keeps the plain path
    assert auto_fast("cuda", "static") and auto_fast("cuda", "static", 1, MIN_GRAPH_TOKENS)
    assert not auto_fast("cuda", "static", 1, MIN_GRAPH_TOKENS - 1)  # too short to repay a capture
    assert not auto_fast("cuda", "growing") and not auto_fast("cuda", "static", num_beams=2)
    assert not auto_fast("cpu", "static", 1, 1000)
    assert resolve_fast(tiny, True, "static") is True
    with pytest.raises(GenerationError, match="cache_mode='static'"):
        generate(tiny, torch.tensor([[1, 2]]), max_new_tokens=2, fast=True, cache_mode="growing")
    with pytest.raises(GenerationError, match="beam search"):
        generate(tiny, torch.tensor([[1, 2]]), max_new_tokens=2, fast=True, num_beams=2)
    assert resolve_fast(tiny, "compile", "static") == "compile"
    with pytest.raises(GenerationError, match="True, False, 'compile' or None"):
        generate(tiny, torch.tensor([[1, 2]]), max_new_tokens=2, fast="yes")
    out = generate(tiny, torch.tensor([[1, 2]]), max_new_tokens=2, fast=None, num_beams=2)  # auto: no error
    assert out.sequences.shape == (1, 4)


@pytest.mark.slow
def test_compiled_step_generates_the_same_tokens(tiny, chars, recwarn):
    """fast="compile" in generate and in the session: same tokens and cache statistics as the plain path."""
    ids = torch.tensor([[5, 9, 2, 7], [1, 1, 3, 4]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    plain = generate(tiny, ids, attention_mask=mask, max_new_tokens=10, fast=False)
    compiled = generate(tiny, ids, attention_mask=mask, max_new_tokens=10, fast="compile")
    assert compiled.new_tokens.tolist() == plain.new_tokens.tolist()
    rows = [
        [(r.token_id, r.cache_length, r.cache_bytes_used) for r in GenerationSession(tiny, chars, "hi", fast=f).run(6)]
        for f in (False, "compile")
    ]
    assert rows[0] == rows[1]
    assert not [w for w in recwarn if "compiled decode step is unavailable" in str(w.message)]  # it really compiled


def test_fast_needs_a_workbench_model():
    class Wrapped(torch.nn.Module):  # mimics the generation contract but is not a TransformerLM
        def __init__(self) -> None:
            super().__init__()
            self.inner = bigram_model({0: {1: 0.9}, 1: {1: 0.9}})
            self.config = self.inner.config

        def new_cache(self, *args, **kwargs):
            return self.inner.new_cache(*args, **kwargs)

        def forward(self, *args, **kwargs):
            return self.inner(*args, **kwargs)

    model = Wrapped().eval()
    with pytest.raises(GenerationError, match="TransformerLM"):
        generate(model, torch.tensor([[0]]), max_new_tokens=2, fast=True)
    assert generate(model, torch.tensor([[0]]), max_new_tokens=2).new_tokens.tolist() == [[1, 1]]
