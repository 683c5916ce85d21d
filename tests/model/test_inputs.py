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
