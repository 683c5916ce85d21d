"""Fixes at learned position tables (`positiontable`): the table found by role, no fix where the indices agree,
and the fix named by how the candidate's indices differ from the reference's, whichever convention each keeps."""

from __future__ import annotations

import hfzoo
import pytest
import torch
from catalogue_nanogpt import GPT, reference

from workbench.compare import compare
from workbench.compare.activations import default_cases
from workbench.compare.positiontable import Indices, position_table, table_fixes
from workbench.lm.adapter import ModelAdapter
from workbench.lm.intercept import intercept


def test_the_position_table_is_found_by_role():
    hf = reference()
    assert position_table(ModelAdapter(hf)) == ("transformer.wpe", hf.transformer.wpe)
    port = GPT(hf).eval()
    assert position_table(ModelAdapter(port)) == ("transformer.wpe", port.transformer.wpe)
    assert position_table(ModelAdapter(hfzoo.build("llama"))) is None  # rotary: no table


def test_hf_gpt2_counts_positions_through_left_padding_unless_given_position_ids():
    """What transformers 5.24's GPT-2 does on its own: the mask does not restart positions (generate and compare
    pass `cumsum(mask) - 1`, which does)."""
    hf = reference()
    seen = Indices("transformer.wpe")
    mask = torch.tensor([[0, 0, 1, 1, 1]])
    with torch.no_grad(), intercept(hf, seen):
        hf(torch.tensor([[5, 5, 7, 8, 9]]), attention_mask=mask)
        hf(torch.tensor([[5, 5, 7, 8, 9]]), attention_mask=mask, position_ids=torch.tensor([[0, 0, 0, 1, 2]]))
    assert [c.tolist() for c in seen.calls] == [[[0, 1, 2, 3, 4]], [[0, 0, 0, 1, 2]]]


@pytest.mark.parametrize("case", ["batch", "padded", "cached"])
def test_no_fix_where_the_indices_agree(case):
    hf = reference()
    ref, cand = ModelAdapter(hf), ModelAdapter(GPT(hf).eval())
    run = next(c for c in default_cases(ref.vocab_size) if c.name == case)
    assert table_fixes(ref, cand, run) == []


@pytest.mark.parametrize("bug, case, name", [
    ("positions_off_by_one", "batch", "positions from 0"),
    ("positions_cache", "cached", "positions continue from the cache"),
    ("positions_padding", "padded", "positions restart after padding"),
])
def test_the_fix_is_named_by_the_difference(bug, case, name):
    hf = reference()
    ref, cand = ModelAdapter(hf), ModelAdapter(GPT(hf, bug).eval())
    run = next(c for c in default_cases(ref.vocab_size) if c.name == case)
    fixes = table_fixes(ref, cand, run)
    assert [f.name for f in fixes] == [name] and fixes[0].whole_model
    assert "`transformer.wpe` is looked up at" in fixes[0].cause


def test_the_reverse_convention_is_named_too():
    """A reference that counts through the padding (nanoGPT's own arange), a candidate that restarts after it."""
    hf = reference()
    c = compare(GPT(hf, "positions_padding").eval(), GPT(hf).eval())
    assert c.first_divergence is not None and (c.first_divergence.label, c.first_divergence.case) == (
        "embedding", "padded"), c.summary()
    assert c.diagnosis is not None and c.diagnosis.cause is not None, c.summary()
    assert c.diagnosis.cause.name == "positions count the padding"
    assert c.diagnosis.cause.error <= c.tolerance < c.diagnosis.replay_error
