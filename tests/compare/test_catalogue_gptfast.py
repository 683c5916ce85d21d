"""The gpt-fast-like catalogue: each planted mistake is found at its point, named and fixed to noise; each of the
three RoPE forms' clean ports is equivalent with no cause."""

from __future__ import annotations

import pytest
from catalogue import assert_found_named_fixed, check, clean
from catalogue_gptfast import FORMS, MISTAKES, load, reference

pytest.importorskip("transformers")


@pytest.mark.parametrize("mistake", MISTAKES, ids=lambda m: f"{m.style}-{m.bug}")
def test_mistake_is_found_named_and_fixed(mistake):
    outcome = check(mistake)
    assert_found_named_fixed(outcome)
    d = outcome.comparison.diagnosis
    assert d is not None and d.replay_error > d.tolerance  # the gap was real before the fix


@pytest.mark.parametrize("form", FORMS)
def test_clean_port_is_equivalent_with_no_cause(form):
    c = clean(reference(), lambda hf, bug: load(hf, form, bug))
    assert c.equivalent and c.diagnosis is None, c.summary()
    assert {e.case for e in c.errors} == {"batch", "padded", "cached"}  # every case ran, the cached one too


def test_catalogue_covers_every_rope_form_and_the_required_mistakes():
    bugs = {(m.style, m.bug) for m in MISTAKES}
    assert len(MISTAKES) >= 10
    assert {s for s, b in bugs if b == "rope_base"} == {"gpt-fast-like", "gpt-fast-like (cossin)",
                                                        "gpt-fast-like (plain)"}
    assert {"rope_dim", "no_permute", "mask_shift", "mask_transposed", "padding_ignored", "input_pos_restart",
            "norm_eps", "no_scale", "w13_swap", "kv_swap", "layers_swap", "norms_swap",
            "no_norm_weight"} <= {b for _, b in bugs}
    assert ("gpt-fast-like (plain)", "rope_dim") in bugs
