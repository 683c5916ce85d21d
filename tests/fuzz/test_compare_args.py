"""Property-based fuzzing of `wb.compare`'s inputs: any ids tensor and case selection is either compared (and
a model against its own copy is then equivalent) or refused with a WorkbenchError; nothing is left patched."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import workbench as wb

from .entry_helpers import ENTRY_FUZZ, assert_no_leaks, run_case

V, MAX_T = 64, 16


@pytest.fixture(scope="module")
def pair() -> tuple[wb.TransformerLM, wb.TransformerLM]:
    torch.manual_seed(0)
    model = wb.TransformerLM(wb.ModelConfig.preset("tiny").replace(positions="learned", max_seq_len=MAX_T,
                                                                   vocab_size=V)).eval()
    return model, copy.deepcopy(model)


@ENTRY_FUZZ
@given(rows=st.integers(0, 3), cols=st.integers(0, 20), low=st.integers(-3, 70), dtype=st.sampled_from(
    [torch.long, torch.int32, torch.float32, torch.bool]), cases=st.lists(
    st.sampled_from(["batch", "padded", "cached", "other"]), max_size=3, unique=True), patching=st.booleans())
def test_fuzz_compare_inputs(pair, rows, cols, low, dtype, cases, patching):
    ref, cand = pair
    ids = (torch.arange(rows * cols).reshape(rows, cols) % 7 + low).to(dtype)
    outcome, result = run_case(lambda: wb.compare(ref, cand, ids, cases=cases, patching=patching), cand)
    assert_no_leaks(ref)
    if outcome == "ok":
        assert result.equivalent and set(result.cases) == set(cases)
        assert (result.patching is None) if not patching else (result.patching.points == () and
                                                               not result.patching.has_gap)
        assert dtype in (torch.long, torch.int32) and cols >= 3 and rows >= 1 and 0 <= low and low + 6 < V
