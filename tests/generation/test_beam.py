"""Beam search: width 1 is greedy, it beats greedy where greedy is myopic, and its scores are exact."""

from __future__ import annotations

import pytest
import torch
from genmodels import bigram_model, padded_batch

from workbench.generation import generate

BOS, A, B, C, D, X, EOS, F = range(8)

# Greedy takes A (0.55) but every continuation of A is weak (<= 0.34); B (0.44) leads to X (0.9).
MYOPIC = {
    BOS: {A: 0.55, B: 0.44},
    A: {C: 0.34, D: 0.32, F: 0.32},
    B: {X: 0.9},
    C: {EOS: 0.9},
    D: {EOS: 0.9},
    F: {EOS: 0.9},
    X: {EOS: 0.9},
}
# Ending at once (0.5) beats A B EOS (0.48 * 0.9 * 0.9) on the summed log-prob, but not per token.
SHORT_OR_LONG = {BOS: {EOS: 0.5, A: 0.48}, A: {B: 0.9}, B: {EOS: 0.9}}


def _sequence_logprobs(model, prompt: torch.Tensor, new: list[int]) -> float:
    """Sum of log p(new tokens), recomputed from one full forward without any cache."""
    seq = torch.cat((prompt, torch.tensor(new)))[None]  # (1, T + N)
    with torch.no_grad():
        logp = torch.log_softmax(model(seq)[0].float(), dim=-1)  # (T + N, V)
    T = prompt.numel()
    return sum(logp[T - 1 + i, tok].item() for i, tok in enumerate(new))


def _rows(out) -> list[list[int]]:
    return [r[:n] for r, n in zip(out.new_tokens.tolist(), out.new_token_counts.tolist())]


def test_beam_width_one_is_greedy_on_a_padded_batch(tiny):
    ids, mask = padded_batch()
    greedy = generate(tiny, ids, attention_mask=mask, max_new_tokens=12)
    beam = generate(tiny, ids, attention_mask=mask, max_new_tokens=12, num_beams=1)
    assert torch.equal(greedy.sequences, beam.sequences)


def test_beam_search_finds_the_sequence_greedy_misses():
    model = bigram_model(MYOPIC)
    prompt = torch.tensor([BOS])
    greedy = generate(model, prompt, max_new_tokens=3, eos_token_id=EOS)
    beam = generate(model, prompt, max_new_tokens=3, num_beams=2, eos_token_id=EOS)
    assert _rows(greedy) == [[A, C, EOS]]
    assert _rows(beam) == [[B, X, EOS]]
    assert beam.finish_reasons == ("eos",)
    assert _sequence_logprobs(model, prompt, [B, X, EOS]) > _sequence_logprobs(model, prompt, [A, C, EOS])


@pytest.mark.parametrize("alpha, winner", [(0.0, [EOS]), (1.0, [A, B, EOS])])
def test_length_penalty_decides_between_short_and_long(alpha, winner):
    model = bigram_model(SHORT_OR_LONG)
    out = generate(model, torch.tensor([BOS]), max_new_tokens=4, num_beams=2, length_penalty=alpha, eos_token_id=EOS)
    assert _rows(out) == [winner]


@pytest.mark.parametrize("alpha", [0.0, 0.7, 1.0, 2.0])
def test_scores_are_length_normalised_log_probs(alpha):
    model = bigram_model(SHORT_OR_LONG)
    prompt = torch.tensor([BOS])
    out = generate(
        model, prompt, max_new_tokens=4, num_beams=3, num_return_sequences=3, length_penalty=alpha, eos_token_id=EOS
    )
    lengths = out.new_token_counts.tolist()
    assert len(set(lengths)) > 1, "the crafted table should give hypotheses of different lengths"
    for row, score in zip(_rows(out), out.scores.tolist()):
        expected = _sequence_logprobs(model, prompt, row) / len(row) ** alpha
        assert score == pytest.approx(expected, abs=1e-4)
    assert out.scores.tolist() == sorted(out.scores.tolist(), reverse=True)


def test_scores_and_order_on_a_random_model_with_padding(tiny):
    ids, mask = padded_batch()
    out = generate(tiny, ids, attention_mask=mask, max_new_tokens=6, num_beams=4, num_return_sequences=2)
    assert out.sequences.shape == (6, 8 + 6)
    assert out.scores.shape == (6,)
    for i, (row, score) in enumerate(zip(_rows(out), out.scores.tolist())):
        prompt = ids[i // 2][mask[i // 2].bool()]
        assert score == pytest.approx(_sequence_logprobs(tiny, prompt, row) / len(row), abs=1e-4)
        assert torch.equal(out.sequences[i, :8], ids[i // 2])
    pairs = out.scores.view(3, 2)
    assert bool((pairs[:, 0] >= pairs[:, 1]).all())


def test_beam_on_a_padded_row_matches_the_row_alone(tiny):
    ids, mask = padded_batch()
    batched = generate(tiny, ids, attention_mask=mask, max_new_tokens=8, num_beams=3)
    for row in range(3):
        alone = generate(tiny, ids[row, mask[row].bool()], max_new_tokens=8, num_beams=3)
        assert torch.equal(batched.new_tokens[row], alone.new_tokens[0])
        assert batched.scores[row].item() == pytest.approx(alone.scores[0].item(), abs=1e-5)


def test_finished_beams_are_padded_after_eos():
    model = bigram_model(MYOPIC)
    out = generate(
        model, torch.tensor([BOS]), max_new_tokens=6, num_beams=3, num_return_sequences=3, eos_token_id=EOS,
        pad_token_id=BOS,
    )  # fmt: skip
    for row, n in zip(out.new_tokens.tolist(), out.new_token_counts.tolist()):
        assert row[n - 1] == EOS
        assert all(t == BOS for t in row[n:])
