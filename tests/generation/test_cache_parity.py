"""Cached decoding equals a full recompute, step after step, including left-padded batches."""

from __future__ import annotations

import pytest
import torch
from genmodels import padded_batch, tiny_model

from workbench.generation import generate

STEPS = 50


@pytest.mark.parametrize("preset", ["tiny", "tiny-gpt2"])
@pytest.mark.parametrize("mode", ["static", "growing"])
def test_cached_logits_match_full_recompute_for_50_steps(preset, mode):
    # init_std 0.1: logits of magnitude ~3, so 1e-5 is ~30 float32 ulps of rounding headroom
    model = tiny_model(preset, init_std=0.1)
    ids, mask = padded_batch()
    B, T = ids.shape
    cache = model.new_cache(B, T + STEPS, mode=mode)
    cached = []
    with torch.no_grad():
        logits = model(ids, attention_mask=mask, cache=cache)[:, -1]  # (B, V)
        seq = ids
        for _ in range(STEPS):
            cached.append(logits)
            token = logits.argmax(-1)  # (B,)
            seq = torch.cat((seq, token[:, None]), dim=1)
            logits = model(token[:, None], cache=cache, validate=False)[:, -1]
        # one uncached forward over the final sequence recomputes every step: position T-1+i is
        # causal, so it sees exactly the tokens step i saw
        full_mask = torch.cat((mask, torch.ones(B, STEPS, dtype=mask.dtype)), dim=1)
        full = model(seq, attention_mask=full_mask)[:, T - 1 : T - 1 + STEPS]  # (B, STEPS, V)
    assert cache.length == T + STEPS
    worst = (torch.stack(cached, dim=1) - full).abs().max().item()
    assert worst <= 1e-5, f"max |cached - recomputed| = {worst:.2e}"


def _naive_greedy(model, ids: torch.Tensor, n: int) -> torch.Tensor:
    """Greedy decoding with no cache at all: the whole sequence is recomputed for every token."""
    seq = ids
    with torch.no_grad():
        for _ in range(n):
            seq = torch.cat((seq, model(seq)[:, -1].argmax(-1, keepdim=True)), dim=1)
    return seq


@pytest.mark.parametrize("mode", ["static", "growing"])
def test_greedy_generate_equals_uncached_greedy(tiny, mode):
    ids, _ = padded_batch()
    out = generate(tiny, ids, max_new_tokens=20, cache_mode=mode)
    assert torch.equal(out.sequences, _naive_greedy(tiny, ids, 20))
    assert out.finish_reasons == ("length",) * 3
    assert out.new_token_counts.tolist() == [20, 20, 20]


@pytest.mark.parametrize("preset", ["tiny", "tiny-gpt2"])
def test_left_padded_rows_continue_like_unpadded_prompts(preset):
    """Positions continue per row from the key mask: a padded row generates what it would alone."""
    model = tiny_model(preset)
    ids, mask = padded_batch()
    batched = generate(model, ids, attention_mask=mask, max_new_tokens=25)
    for row in range(3):
        alone = ids[row, mask[row].bool()][None]  # (1, T_row) without the padding
        single = generate(model, alone, max_new_tokens=25)
        assert torch.equal(batched.new_tokens[row], single.new_tokens[0]), f"row {row} differs"
