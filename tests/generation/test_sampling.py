"""Sampling: reproducible with a seed, and the processed distribution is the one documented."""

from __future__ import annotations

import pytest
import torch
from genmodels import padded_batch

from workbench.generation import GenerationRequest, entropy, generate, process_logits
from workbench.generation.sampling import choose


def _sample(model, **kw):
    ids, mask = padded_batch()
    return generate(model, ids, attention_mask=mask, max_new_tokens=20, do_sample=True, temperature=1.5, **kw)


def test_same_seed_same_tokens_different_seed_different_tokens(tiny):
    first, again, other = _sample(tiny, seed=7), _sample(tiny, seed=7), _sample(tiny, seed=8)
    assert torch.equal(first.sequences, again.sequences)
    assert not torch.equal(first.new_tokens, other.new_tokens)


def test_explicit_generator_is_reproducible_and_matches_seed(tiny):
    a = _sample(tiny, generator=torch.Generator().manual_seed(3))
    b = _sample(tiny, seed=3)
    assert torch.equal(a.sequences, b.sequences)


def test_sampling_is_not_greedy_and_top_k_one_is(tiny):
    ids, _ = padded_batch()
    greedy = generate(tiny, ids, max_new_tokens=20)
    assert not torch.equal(_sample(tiny, seed=0).new_tokens, greedy.new_tokens)
    top1 = generate(tiny, ids, max_new_tokens=20, do_sample=True, top_k=1, temperature=3.0, seed=0)
    assert torch.equal(top1.sequences, greedy.sequences)


def test_several_samples_per_prompt_are_independent(tiny):
    ids, _ = padded_batch()
    out = generate(tiny, ids[:1], max_new_tokens=15, do_sample=True, temperature=2.0, num_return_sequences=3, seed=1)
    assert out.sequences.shape == (3, 8 + 15)
    assert len({tuple(r) for r in out.new_tokens.tolist()}) == 3


def test_top_k_keeps_exactly_k_tokens():
    logits = torch.tensor([[3.0, 1.0, 2.0, 0.5, -1.0]])
    kept = process_logits(logits, GenerationRequest(do_sample=True, top_k=2)).isfinite()
    assert kept.tolist() == [[True, False, True, False, False]]


@pytest.mark.parametrize("top_p, kept", [(0.4, 1), (0.75, 2), (0.85, 3), (1.0, 4)])
def test_top_p_keeps_the_smallest_set_reaching_p(top_p, kept):
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    out = process_logits(logits, GenerationRequest(do_sample=True, top_p=top_p))
    assert out.isfinite().sum().item() == kept
    assert out[0, :kept].isfinite().all()  # the most likely tokens are the ones kept


def test_samples_follow_the_tempered_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).repeat(4000, 1)
    request = GenerationRequest(do_sample=True, temperature=0.7, seed=0)
    draws = choose(logits, request, request.new_generator(torch.device("cpu")))
    freq = torch.bincount(draws, minlength=4).float() / 4000
    expected = torch.softmax(logits[0] / 0.7, dim=-1)
    assert torch.allclose(freq, expected, atol=0.03)


def test_entropy_in_nats():
    assert entropy(torch.zeros(1, 8)).item() == pytest.approx(torch.log(torch.tensor(8.0)).item())
    masked = torch.tensor([[0.0, 0.0, float("-inf")]])
    assert entropy(masked).item() == pytest.approx(torch.log(torch.tensor(2.0)).item())
