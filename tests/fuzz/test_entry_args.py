"""Property-based fuzzing of the entry points' arguments (issue 17): forward, cache reorder, trace
selections, device strings and widgets. Each case keeps the suite's contract (conftest.contract, via
entry_helpers.run_case)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import workbench as wb
from workbench.capture import trace
from workbench.model.placement import resolve_device

from .entry_helpers import ENTRY_FUZZ, run_case

V, MAX_T = 64, 16


@pytest.fixture(scope="module")
def learned() -> wb.TransformerLM:
    torch.manual_seed(0)
    cfg = wb.ModelConfig.preset("tiny").replace(positions="learned", max_seq_len=MAX_T, vocab_size=V)
    return wb.TransformerLM(cfg).eval()


@pytest.fixture(scope="module")
def rope() -> wb.TransformerLM:
    torch.manual_seed(0)
    return wb.TransformerLM(wb.ModelConfig.preset("tiny").replace(max_seq_len=MAX_T, vocab_size=V)).eval()


numbers = st.one_of(st.integers(-40, 40), st.floats(allow_nan=True, allow_infinity=True, width=32))


@ENTRY_FUZZ
@given(rows=st.integers(1, 2), cols=st.integers(1, 6), values=st.lists(numbers, min_size=12, max_size=12),
       as_float=st.booleans(), use_mask=st.booleans())
def test_fuzz_forward_positions_and_masks(learned, rows, cols, values, as_float, use_mask):
    ids = torch.arange(rows * cols).reshape(rows, cols) % V
    grid = [values[(r * cols + c) % len(values)] for r in range(rows) for c in range(cols)]
    dtype = torch.float32 if as_float or any(isinstance(v, float) for v in grid) else torch.long
    tensor = torch.tensor(grid, dtype=dtype).reshape(rows, cols)
    kwargs = {"attention_mask": tensor} if use_mask else {"position_ids": tensor}
    outcome, result = run_case(lambda: learned(ids, **kwargs), learned)
    if outcome == "ok":  # accepted only what is valid, and then the logits are sound
        assert result.shape == (rows, cols, V) and torch.isfinite(result).all()
        if not use_mask:
            assert dtype == torch.long and int(tensor.min()) >= 0 and int(tensor.max()) < MAX_T
        else:
            assert bool(((tensor == 0) | (tensor == 1)).all()) and bool(tensor.bool().any(1).all())


@ENTRY_FUZZ
@given(index=st.lists(st.one_of(st.integers(-4, 5), st.floats(-2, 5)), min_size=0, max_size=5))
def test_fuzz_cache_reorder(rope, index):
    cache = rope.new_cache(3, 8)
    rope(torch.tensor([[1, 2], [3, 4], [5, 6]]), cache=cache)
    outcome, _ = run_case(lambda: cache.reorder(index))
    if outcome == "ok":
        assert all(isinstance(i, int) and 0 <= i < 3 for i in index) and index
        assert cache.batch_size == len(index)
    else:
        assert cache.batch_size == 3  # a refused reorder changes nothing


small_ints = st.integers(-6, 8)
selection = st.one_of(st.none(), small_ints, st.lists(small_ints, max_size=4),
                      st.builds(slice, st.one_of(st.none(), small_ints), st.one_of(st.none(), small_ints),
                                st.one_of(st.none(), st.integers(-1, 3))),
                      st.text(max_size=3), st.floats(-2, 2))


@ENTRY_FUZZ
@given(heads=selection, queries=selection, batch=selection, layers=selection,
       budget=st.one_of(st.integers(-10, 2**20), st.just("1MB")))
def test_fuzz_trace_attention_selections(rope, heads, queries, batch, layers, budget):
    ids = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])  # B=2, H=4, T=4

    def case():
        with trace(rope, attention=True, attention_heads=heads, attention_queries=queries,
                   attention_batch=batch, attention_layers=layers, attention_budget_bytes=budget) as tr:
            logits = rope(ids)
        return tr, logits

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outcome, result = run_case(case, rope)
    if outcome == "ok":
        tr, logits = result
        assert torch.isfinite(logits).all()
        for rec in tr.attention:  # never an empty or out-of-range selection recorded in silence
            assert rec.queries and set(rec.heads) <= set(range(4)) and set(rec.batch) <= {0, 1}
            if rec.map is not None:
                assert rec.map.shape[:2] == (len(rec.batch), len(rec.heads))
                assert math.isfinite(float(rec.map.float().sum()))


@ENTRY_FUZZ
@given(device=st.one_of(st.text(max_size=12), st.sampled_from(["cpu", "cuda", "cuda:0", "cuda:9", "mps", "meta",
                                                                "CPU", "cpu:0", "gpu", "xla", ""]),
                        st.integers(-2, 3), st.floats(), st.none()))
def test_fuzz_device_strings(device):
    outcome, result = run_case(lambda: resolve_device(device))
    if outcome == "ok":
        assert isinstance(result, torch.device)
        if result.type == "cuda":
            assert torch.cuda.is_available()


# --- the findings of issue 17, kept by name --------------------------------------------------------------
def test_regression_learned_positions_out_of_range(learned):
    assert run_case(lambda: learned(torch.tensor([[1, 2]]), position_ids=torch.tensor([[0, 99]])))[0] == "refused"
    assert run_case(lambda: learned(torch.tensor([[1, 2]]), position_ids=torch.tensor([[-1, 0]])))[0] == "refused"


def test_regression_fractional_and_nan_positions_are_not_cast(learned):
    for bad in ([[0.0, 1.5]], [[0.0, float("nan")]]):
        positions = torch.tensor(bad)
        assert run_case(lambda p=positions: learned(torch.tensor([[1, 2]]), position_ids=p))[0] == "refused"


def test_regression_list_mask_and_positions(learned):
    assert run_case(lambda: learned(torch.tensor([[1, 2]]), attention_mask=[[1, 1]]))[0] == "refused"
    assert run_case(lambda: learned(torch.tensor([[1, 2]]), position_ids=[[0, 1]]))[0] == "refused"


def test_regression_foreign_cache_and_bad_reorder(rope, learned):
    other = wb.TransformerLM(wb.ModelConfig.preset("tiny").replace(n_layers=1, max_seq_len=MAX_T, vocab_size=V))
    assert run_case(lambda: rope(torch.tensor([[1, 2]]), cache=other.new_cache(1)))[0] == "refused"
    assert run_case(lambda: rope.new_cache(2, 8).reorder(torch.tensor([5])))[0] == "refused"


def test_regression_bogus_and_missing_devices():
    assert run_case(lambda: wb.load_pretrained(wb.models.tiny_path(), device="bogus"))[0] == "refused"
    if not torch.cuda.is_available():
        assert run_case(lambda: wb.load_pretrained(wb.models.tiny_path(), device="cuda"))[0] == "refused"


def test_regression_heads_and_batch_never_raise_inside_the_hook(rope):
    def heads():
        with trace(rope, attention_heads=[99]):
            rope(torch.tensor([[1, 2]]))

    def batch():
        with trace(rope, attention=True, attention_batch=5):
            rope(torch.tensor([[1, 2]]))

    assert run_case(heads, rope)[0] == "refused" and run_case(batch, rope)[0] == "refused"


def test_regression_out_of_range_queries_warn(rope):
    with pytest.warns(UserWarning, match="selects none"):
        assert run_case(lambda: _trace_queries(rope, [50]), rope)[0] == "ok"


def _trace_queries(model, queries):
    with trace(model, attention_queries=queries) as tr:
        model(torch.tensor([[1, 2]]))
    assert tr.attention == []
    return tr


def test_regression_widgets_and_gradient_history_refuse_wrong_types():
    from workbench.capture.gradients import GradientHistory
    from workbench.widgets import AttentionView, LayerInspector

    assert run_case(lambda: GradientHistory().append("not a trace"))[0] == "refused"
    assert run_case(lambda: LayerInspector(42))[0] == "refused"
    assert run_case(lambda: AttentionView("x"))[0] == "refused"
