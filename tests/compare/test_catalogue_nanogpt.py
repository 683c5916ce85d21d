"""The nanoGPT-like entries of the port-mistake catalogue: each found at its point, named and fixed to noise; the
clean port equivalent with no cause."""

from __future__ import annotations

import pytest
from catalogue import assert_found_named_fixed, check, clean
from catalogue_nanogpt import MISTAKES, einsum_port, port, reference


@pytest.mark.parametrize("mistake", MISTAKES, ids=[f"{m.style}-{m.bug}" for m in MISTAKES])
def test_mistake_is_found_named_and_fixed(mistake):
    assert_found_named_fixed(check(mistake))


def test_catalogue_covers_the_nanogpt_mistakes():
    assert len(MISTAKES) >= 10
    assert len({(m.style, m.bug) for m in MISTAKES}) == len(MISTAKES)
    assert {"scale x 1/sqrt(D)", "scale x sqrt(D)", "softmax axis", "mask before softmax", "mask: causal",
            "mask: padding", "positions from 0", "positions continue from the cache",
            "positions restart after padding", "exact GELU -> tanh GELU", "weights: undo transposed",
            "norm placement: pre", "weights: swap back", "add missing bias", "add position table",
            "add missing norm weight"} <= {m.fix for m in MISTAKES}
    assert {"qk_swap", "no_ln_bias", "no_wpe", "mlp_swap", "layers_swap", "norms_swap"} <= {m.bug for m in MISTAKES}


@pytest.mark.parametrize("make", [port, einsum_port], ids=["matmul", "einsum"])
def test_clean_port_is_equivalent_with_no_cause(make):
    c = clean(reference(), make)
    assert c.equivalent, c.summary()
    assert c.diagnosis is None and c.first_divergence is None
    assert c.cases == ("batch", "padded", "cached")
    assert c.weights.exact and not c.weights.unmatched_candidate and not c.weights.unmatched_reference
