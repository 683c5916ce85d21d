"""The HF-like port style of the catalogue: every planted mistake found at its point, named and fixed to noise;
the clean port of each reference (Llama with GQA, Llama with MHA, Qwen2 with q/k/v biases) equivalent, no cause."""

from __future__ import annotations

import pytest
from catalogue import assert_found_named_fixed, check, clean
from catalogue_hf import MISTAKES, llama, llama_mha, port, qwen

pytest.importorskip("transformers")


@pytest.mark.parametrize("mistake", MISTAKES, ids=[m.bug for m in MISTAKES])
def test_each_hf_like_mistake_is_found_named_and_fixed(mistake):
    outcome = check(mistake)
    assert_found_named_fixed(outcome)
    d = outcome.comparison.diagnosis
    assert d is not None and d.replay_error > d.tolerance, outcome.comparison.summary()  # the gap was real


@pytest.mark.parametrize("reference", [llama, llama_mha, qwen], ids=["llama", "llama_mha", "qwen2"])
def test_the_clean_hf_like_port_is_equivalent_with_no_cause(reference):
    c = clean(reference(), port)
    assert c.equivalent and c.diagnosis is None, c.summary()
    assert c.weights.exact and not c.weights.role_findings(), c.summary()


def test_the_catalogue_holds_at_least_ten_distinct_mistakes():
    assert len({m.bug for m in MISTAKES}) == len(MISTAKES) >= 10
