"""GenerationSession: one token per step, records that match an independent recompute, no prompt recompute."""

from __future__ import annotations

import pytest
import torch
from genmodels import tiny_model

from workbench import GenerationError
from workbench.generation import GenerationSession, generate

PROMPT = "hello there"


def _full_forward(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids]))[0, -1].float()  # (V,) last-position logits, no cache


def test_session_tokens_equal_greedy_generate(tiny, chars):
    session = GenerationSession(tiny, chars, PROMPT)
    records = session.run(12)
    ids = torch.tensor([chars.encode(PROMPT)])
    expected = generate(tiny, ids, max_new_tokens=12).new_tokens[0].tolist()
    assert [r.token_id for r in records] == expected == session.generated_ids
    assert session.tokens == chars.encode(PROMPT) + expected
    assert session.text == PROMPT + chars.decode(expected)
    assert [r.step for r in records] == list(range(12))
    assert [r.position for r in records] == list(range(len(PROMPT), len(PROMPT) + 12))


def test_prompt_is_never_recomputed(tiny, chars):
    fed: list[int] = []
    handle = tiny.register_forward_pre_hook(lambda module, args, kwargs: fed.append(args[0].shape[1]), with_kwargs=True)
    try:
        session = GenerationSession(tiny, chars, PROMPT)
        session.run(5)
        session.reset()
        session.run(3)
    finally:
        handle.remove()
    assert fed == [len(PROMPT)] + [1] * 8  # one prefill, then exactly one token per step
    assert session.cache.length == len(PROMPT) + 3


def test_records_match_an_independent_full_forward(tiny, chars):
    session = GenerationSession(tiny, chars, PROMPT, top_k_candidates=5)
    for record in session.run(4):
        context = session.tokens[: record.position]
        probs = torch.softmax(_full_forward(tiny, context), dim=-1)
        top = probs.topk(5)
        assert list(record.candidate_ids) == top.indices.tolist()
        assert record.candidate_probs == pytest.approx(top.values.tolist(), abs=1e-5)
        assert record.candidate_texts == tuple(chars.decode([i]) for i in top.indices.tolist())
        assert record.token_id == record.candidate_ids[0]  # greedy
        assert record.token_prob == pytest.approx(probs[record.token_id].item(), abs=1e-5)
        assert record.entropy == pytest.approx(-(probs * probs.log()).sum().item(), abs=1e-4)
        assert record.token_text == chars.decode([record.token_id])
        assert record.cache_length == record.position + 1
        assert record.step_time > 0
        assert record.attention is None


def test_attention_capture_matches_eager_attention_of_a_full_forward(tiny, chars):
    session = GenerationSession(tiny, chars, PROMPT, capture_attention=True)
    records = session.run(3)
    L, H = tiny.config.n_layers, tiny.config.n_heads
    for record in records:
        S = record.cache_length
        assert record.attention.shape == (L, H, S) and record.attention.device.type == "cpu"
        assert torch.allclose(record.attention.sum(-1), torch.ones(L, H), atol=1e-5)
    seen = {}
    hooks = [
        tiny.get_submodule(f"blocks.{i}.attn.hook_pattern").register_forward_hook(
            lambda m, a, out, i=i: seen.__setitem__(i, out[0, :, -1])  # (H, S) of the last query
        )
        for i in range(L)
    ]
    try:
        _full_forward(tiny, session.tokens)
    finally:
        for h in hooks:
            h.remove()
    expected = torch.stack([seen[i] for i in range(L)])  # (L, H, S)
    assert torch.allclose(records[-1].attention, expected, atol=1e-5)
    assert session.prompt_attention.shape == (L, H, len(PROMPT))
    assert not any(tiny.get_submodule(f"blocks.{i}.attn.hook_pattern").is_hooked for i in range(L))


def test_reset_rewinds_and_replays(tiny, chars):
    session = GenerationSession(tiny, chars, PROMPT, do_sample=True, temperature=1.3, seed=5)
    first = [r.token_id for r in session.run(8)]
    session.reset()
    assert session.history == () and session.generated_ids == [] and session.cache.length == len(PROMPT)
    assert [r.token_id for r in session.run(8)] == first
    session.reset("abc")
    assert session.prompt_length == 3 and session.tokens == chars.encode("abc")
    assert len(session.history) == 0


def test_a_reset_that_cannot_make_its_cache_leaves_a_session_that_says_so(tiny, chars, monkeypatch):
    session = GenerationSession(tiny, chars, PROMPT)

    def out_of_memory(*_args, **_kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(session.lm, "new_cache", out_of_memory)
    with pytest.raises(RuntimeError, match="out of memory"):
        session.reset("abc")
    for use in (lambda: session.cache, session.step):  # an error that says what to do, not an AssertionError
        with pytest.raises(GenerationError, match=r"the session has no cache: the last reset\(prompt\) failed"):
            use()
    monkeypatch.undo()
    session.reset("abc")
    assert session.cache.length == 3 and session.step().position == 3


def test_cache_grows_past_its_reserve_without_changing_tokens(tiny, chars):
    small = GenerationSession(tiny, chars, PROMPT, reserve=2)
    big = GenerationSession(tiny, chars, PROMPT, reserve=64)
    assert small.cache.max_len == len(PROMPT) + 2
    records = small.run(10)
    assert [r.token_id for r in records] == [r.token_id for r in big.run(10)]
    allocated = [sum(r.cache_bytes_allocated) for r in records]
    assert allocated == sorted(allocated) and allocated[-1] > allocated[0]  # reallocated as it filled
    assert small.cache.max_len >= small.cache.length == len(PROMPT) + 10


def test_session_stops_at_max_seq_len():
    model = tiny_model("tiny", max_seq_len=16)
    session = GenerationSession(model, _Chars(), "0123456789")
    assert len(session.run(6)) == 6  # fills the context exactly
    with pytest.raises(GenerationError, match="max_seq_len"):
        session.step()


def test_eos_and_stop_strings_end_the_session(tiny, chars):
    probe = GenerationSession(tiny, chars, PROMPT)
    ids = [r.token_id for r in probe.run(6)]
    ended = GenerationSession(tiny, chars, PROMPT, eos_token_id=ids[2])
    records = ended.run(10)
    assert len(records) == 3 and records[-1].finish_reason == "eos" and ended.finished
    with pytest.raises(GenerationError, match="reset"):
        ended.step()
    stop_text = chars.decode(ids[3:5])
    stopped = GenerationSession(tiny, chars, PROMPT, stop_strings=[stop_text])
    assert len(stopped.run(10)) == 5 and stopped.finish_reason == "stop_string"
    assert stopped.generated_text.endswith(stop_text)


def test_stop_strings_in_generate(tiny, chars):
    ids = torch.tensor([chars.encode(PROMPT)])
    free = generate(tiny, ids, max_new_tokens=10).new_tokens[0].tolist()
    out = generate(tiny, ids, max_new_tokens=10, stop_strings=chars.decode(free[2:4]), tokenizer=chars)
    assert out.finish_reasons == ("stop_string",)
    assert out.new_tokens[0].tolist() == free[:4]


class _Chars:
    eos_token_id = None

    def encode(self, text):
        return [int(c) for c in text]

    def decode(self, ids):
        return "".join(str(int(i) % 10) for i in ids)
