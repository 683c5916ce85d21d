"""SmolLM2-135M: greedy generation matches HF transformers `generate` token for token (same GGUF weights)."""

from __future__ import annotations

import pytest
import torch

from workbench.generation import GenerationSession, generate

pytest.importorskip("transformers")
pytestmark = pytest.mark.slow

PROMPTS = ["Once upon a time, in a small village by the sea,", "def fibonacci(n):"]
NEW = 32


@pytest.fixture(scope="module")
def hf_greedy(smollm2, hf_smollm2):
    """HF greedy continuations (32 new tokens): each prompt alone, and both as one left-padded batch."""
    _, tok = smollm2
    out = {}
    for key, texts in ((0, PROMPTS[0]), (1, PROMPTS[1]), ("batch", PROMPTS)):
        enc = tok(texts)
        with torch.no_grad():
            seq = hf_smollm2.generate(
                **enc, max_new_tokens=NEW, do_sample=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id
            )
        out[key] = (enc, seq[:, enc["input_ids"].shape[1] :])
    return out


@pytest.mark.parametrize("which", [0, 1, "batch"])
def test_greedy_matches_hf_generate_over_32_tokens(smollm2, hf_greedy, which):
    model, tok = smollm2
    enc, theirs = hf_greedy[which]
    ours = generate(model, enc["input_ids"], attention_mask=enc["attention_mask"], max_new_tokens=NEW, tokenizer=tok)
    assert theirs.shape[1] == NEW  # HF did not stop early either, so all 32 tokens are compared
    assert ours.new_tokens.tolist() == theirs.tolist()
    assert ours.finish_reasons == ("length",) * theirs.shape[0]


def test_session_matches_hf_and_captures_gqa_attention(smollm2, hf_greedy):
    model, tok = smollm2
    session = GenerationSession(model, tok, PROMPTS[1], capture_attention=True, top_k_candidates=5)
    records = session.run(6)
    assert [r.token_id for r in records] == hf_greedy[1][1][0, :6].tolist()
    last = records[-1]
    assert last.attention.shape == (30, 9, session.cache.length)
    assert len(last.cache_bytes_used) == 30
    assert sum(last.cache_bytes_used) == 2 * 30 * 3 * 64 * 4 * session.cache.length  # L*K*D*fp32 bytes, K and V
