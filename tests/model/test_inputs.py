"""Bad inputs raise InputError naming the problem, never an IndexError or silent garbage."""

from __future__ import annotations

import pytest
import torch

import workbench as wb


@pytest.fixture(scope="module")
def model() -> wb.TransformerLM:
    torch.manual_seed(0)
    return wb.TransformerLM(wb.ModelConfig.preset("tiny").replace(max_seq_len=16)).eval()


@pytest.mark.parametrize(
    "ids, message",
    [
        (torch.tensor([[1, 2, 256]]), r"outside \[0, 256\) \(min 1, max 256\)"),
        (torch.tensor([[1, -2, 3]]), r"outside \[0, 256\) \(min -2, max 3\)"),
        (torch.tensor([[1.0, 2.0]]), "integer token ids, got dtype torch.float32"),
        (torch.zeros(1, 0, dtype=torch.long), "is empty"),
        (torch.tensor([1, 2, 3]), r"must be 2-D \(batch, time\), got shape \(3,\)"),
        (torch.zeros(1, 17, dtype=torch.long), "sequence length 17 .* exceeds max_seq_len=16"),
        ([[1, 2]], "must be a torch.Tensor, got list"),
    ],
)
def test_bad_ids(model, ids, message):
    with pytest.raises(wb.InputError, match=message):
        model(ids)


@pytest.mark.parametrize(
    "mask, message",
    [
        (torch.ones(1, 5), r"attention_mask shape \(1, 5\) does not match input_ids \(1, 4\)"),
        (torch.ones(2, 4), "does not match"),
        (torch.tensor([[0, 1, 2, 1]]), "only 0 and 1"),
        (torch.tensor([[0.0, float("-inf"), 0.0, 0.0]]), "only 0 and 1"),
        (torch.zeros(1, 4), "all zeros"),
    ],
)
def test_bad_masks(model, mask, message):
    with pytest.raises(wb.InputError, match=message):
        model(torch.tensor([[1, 2, 3, 4]]), attention_mask=mask)


def test_bad_position_ids_and_cache(model):
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(wb.InputError, match="position_ids shape"):
        model(ids, position_ids=torch.arange(4)[None])
    cache = model.new_cache(2, 8)
    with pytest.raises(wb.InputError, match="cache batch size 2 does not match input batch size 1"):
        model(ids, cache=cache)
    cache = model.new_cache(1, 4)
    model(ids, cache=cache)
    with pytest.raises(wb.InputError, match="holds 3 of 4 positions and cannot take 3 more"):
        model(ids, cache=cache)
    with pytest.raises(wb.InputError, match="exceeds the model's max_seq_len=16"):
        model.new_cache(1, 17)


def test_bool_and_float_masks_agree(model):
    ids = torch.tensor([[5, 6, 7, 8]])
    m = torch.tensor([[0, 1, 1, 1]])
    a = model(ids, attention_mask=m)
    b = model(ids, attention_mask=m.bool())
    c = model(ids, attention_mask=m.float())
    assert torch.equal(a, b) and torch.equal(a, c)


# --- issue 17: hostile position ids, list inputs, foreign caches, reorders ------------------------
@pytest.fixture(scope="module")
def learned() -> wb.TransformerLM:
    torch.manual_seed(0)
    return wb.TransformerLM(wb.ModelConfig.preset("tiny").replace(positions="learned", max_seq_len=16)).eval()


@pytest.mark.parametrize(
    "positions, message",
    [
        (torch.tensor([[0, 1, 16]]), r"reach 16, but this model learned positions \[0, 16\)"),
        (torch.tensor([[0, -1, 2]]), r"negative positions \(min -1\)"),
        (torch.tensor([[0.0, 1.5, 2.0]]), "integer positions, got dtype torch.float32"),
        (torch.tensor([[0.0, float("nan"), 2.0]]), "Fractional or NaN positions are refused"),
        (torch.tensor([[True, False, True]]), "integer positions, got dtype torch.bool"),
        ([[0, 1, 2]], "position_ids must be a torch.Tensor or None, got list"),
    ],
)
def test_bad_position_ids_on_learned_positions(learned, positions, message):
    with pytest.raises(wb.InputError, match=message):
        learned(torch.tensor([[1, 2, 3]]), position_ids=positions)


def test_valid_position_ids_still_shift_learned_positions(learned):
    ids = torch.tensor([[1, 2, 3]])
    shifted = learned(ids, position_ids=torch.tensor([[13, 14, 15]]))
    assert not torch.allclose(shifted, learned(ids))
    assert torch.equal(learned(ids, position_ids=torch.tensor([[0, 1, 2]], dtype=torch.int32)), learned(ids))


def test_rope_positions_refuse_negatives_but_not_large_values(model):
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(wb.InputError, match="negative positions"):
        model(ids, position_ids=torch.tensor([[-3, -2, -1]]))
    assert torch.isfinite(model(ids, position_ids=torch.tensor([[100, 101, 102]]))).all()


def test_a_mask_given_as_a_list_is_refused_with_the_fix(model):
    with pytest.raises(wb.InputError, match=r"attention_mask must be a torch.Tensor or None, got list.*torch.tensor"):
        model(torch.tensor([[1, 2, 3]]), attention_mask=[[1, 1, 1]])


def test_another_models_cache_is_refused(model):
    other = wb.TransformerLM(wb.ModelConfig.preset("tiny").replace(n_layers=1, max_seq_len=16))
    with pytest.raises(wb.InputError, match=r"built for another model .* = \(1, 4, 16\), but this model has \(2"):
        model(torch.tensor([[1, 2]]), cache=other.new_cache(1))
    with pytest.raises(wb.InputError, match="cache must be a workbench KVCache, got tuple"):
        model(torch.tensor([[1, 2]]), cache=((), ()))


@pytest.mark.parametrize(
    "index, message",
    [
        (torch.tensor([0, 2]), r"rows must lie in \[0, 2\) .* max 2"),
        (torch.tensor([-1, 0]), r"min -1"),
        (torch.tensor([0.0, 1.0]), "integer tensor"),
        (torch.tensor([[0, 1]]), r"1-D integer tensor .* shape \(1, 2\)"),
        (torch.tensor([], dtype=torch.long), "non-empty"),
        ("rows", "got str"),
    ],
)
def test_out_of_range_cache_reorder_is_refused(model, index, message):
    cache = model.new_cache(2, 8)
    model(torch.tensor([[1, 2], [3, 4]]), cache=cache)
    with pytest.raises(wb.InputError, match=message):
        cache.reorder(index)
    assert cache.batch_size == 2 and cache.keys[0].shape[0] == 2  # untouched


def test_a_valid_reorder_repeats_rows(model):
    cache = model.new_cache(2, 8)
    model(torch.tensor([[1, 2], [3, 4]]), cache=cache)
    k1 = cache.keys[0][1].clone()
    cache.reorder([1, 1, 0])
    assert cache.batch_size == 3 and torch.equal(cache.keys[0][0], k1) and torch.equal(cache.keys[0][1], k1)
