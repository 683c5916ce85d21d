"""Property-based fuzzing of `logit_lens`'s arguments: ids (lists, tensors of any shape and dtype, text), targets
(ids, text, None) and top_k. Each case ends in a WorkbenchError or a sound lens, and leaves nothing hooked."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import workbench as wb

from .entry_helpers import ENTRY_FUZZ, run_case

V = 64


class Chars:
    """Token id i is chr(32 + i): text outside the vocabulary encodes to ids outside it."""

    def encode(self, text: str) -> list[int]:
        return [ord(c) - 32 for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(32 + int(i)) for i in ids)


@pytest.fixture(scope="module")
def model() -> wb.TransformerLM:
    torch.manual_seed(0)
    return wb.TransformerLM(wb.ModelConfig.preset("tiny").replace(max_seq_len=16, vocab_size=V)).eval()


ids_values = st.one_of(
    st.lists(st.integers(-3, V + 3), min_size=0, max_size=8),
    st.lists(st.one_of(st.integers(0, V - 1), st.floats(0, 5), st.booleans()), min_size=1, max_size=4),
    st.text(alphabet=st.characters(min_codepoint=30, max_codepoint=100), max_size=8),
    st.builds(lambda shape, dtype: torch.zeros(shape, dtype=dtype).fill_(3),
              st.lists(st.integers(0, 3), min_size=0, max_size=3).map(tuple),
              st.sampled_from([torch.long, torch.int32, torch.float32, torch.bool])),
)
targets = st.one_of(st.none(), st.integers(-2, V + 2), st.text(max_size=3), st.booleans(), st.floats(0, 3))
top_ks = st.one_of(st.integers(-2, V + 4), st.booleans(), st.floats(0, 4), st.none())


@ENTRY_FUZZ
@given(ids=ids_values, target=targets, top_k=top_ks, with_tokenizer=st.booleans())
def test_fuzz_logit_lens_arguments(model, ids, target, top_k, with_tokenizer):
    tok = Chars() if with_tokenizer else None
    outcome, lens = run_case(lambda: wb.logit_lens(model, ids, tokenizer=tok, target=target, top_k=top_k), model)
    if outcome == "refused":
        return
    assert isinstance(top_k, int) and not isinstance(top_k, bool) and top_k >= 1
    assert lens.n_layers == 3 and lens.top_k == min(top_k, V) and 1 <= lens.n_positions <= 16
    assert all(0 <= i < V for i in lens.ids)
    for layer in range(lens.n_layers):
        for pos in range(lens.n_positions):
            probs = lens.top_probs[layer][pos]
            assert all(0 <= p <= 1 for p in probs) and list(probs) == sorted(probs, reverse=True)
            rank, p = lens.target_ranks[layer][pos], lens.target_probs[layer][pos]
            assert (rank is None) == (p is None) == (lens.targets[pos] is None)
            assert rank is None or 1 <= rank <= V
            assert 0 <= lens.entropy[layer][pos] <= math.log(V) + 1e-4
