"""The mask argument of an attention module rewritten with the reference's convention, in its own format."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from workbench.compare.activations import Case
from workbench.compare.cachepos import GivenPositions, given_position_fixes
from workbench.compare.maskfix import Convention, MaskArgument, MaskFormat, mask_argument, mask_fixes
from workbench.compare.record import Call
from workbench.lm.intercept import intercept

B, T, S = 2, 3, 8


def test_the_convention_is_causal_by_slot_from_the_start_minus_the_padding():
    keys = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])  # the second row left-padded by 2
    got = Convention(2, keys).allowed(B, T, 6, torch.device("cpu"))
    want = torch.zeros(B, T, 6, dtype=torch.bool)
    for b in range(B):
        for i in range(T):
            want[b, i, : 2 + i + 1] = True
    want[1, :, :2] = False  # padding keys hidden
    assert torch.equal(got, want)
    first = Convention(0, keys).allowed(B, T, 6, torch.device("cpu"))
    assert bool(first[1, 0].all()) and bool(first[1, 1].all())  # padding queries see every key, not none


def test_each_format_keeps_its_polarity_and_round_trips():
    ref = Convention(0, None).allowed(1, T, S, torch.device("cpu"))  # (1, T, S)
    allows = ref[0].clone()  # (T, S) bool, True = may attend
    hides = ~ref[:, None]  # (1, 1, T, S) bool, True = hidden
    additive = torch.zeros(B, 1, T, S).masked_fill(~ref[:, None], float("-inf"))  # (B, 1, T, S)
    for mask, true_allows in ((allows, True), (hides, False), (additive, True)):
        fmt = MaskFormat.of(mask, 0)
        assert fmt.true_allows is true_allows
        assert torch.equal(fmt.allowed(mask).expand(B, T, S), ref.expand(B, T, S))
        written = fmt.written(ref.expand(mask.shape[0] if mask.dim() > 2 else 1, T, S), mask)
        assert written.dtype == mask.dtype and written.dim() == mask.dim()
        assert torch.equal(written, mask.expand_as(written))
    assert MaskFormat.of(additive, 0).fill == float("-inf")


class Attn(nn.Module):
    """Returns x plus the number of keys each query may see (so the mask it got is visible in the output)."""

    def forward(self, x: torch.Tensor, cos: torch.Tensor, pad: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return x + mask.long().sum(-1).reshape(-1, mask.shape[-2], 1).float()[: x.shape[0]]


def test_the_mask_argument_is_found_among_other_arguments_and_replaced():
    x = torch.zeros(1, T, 4)
    cos = torch.ones(T, S)  # a float (T, S) that is no mask
    pad = torch.ones(1, S, dtype=torch.long)
    shifted = torch.ones(S, S, dtype=torch.bool).tril(1)[None, None, :T]  # (1, 1, T, S)
    found = mask_argument((x, cos, pad), {"mask": shifted})
    assert found is not None and found[0] == "mask" and found[1] is shifted
    model = nn.Module()
    model.attn = Attn()
    with intercept(model, MaskArgument("attn", Convention(0, None))):
        out = model.attn(x, cos, pad, mask=shifted)
    assert out[0, :, 0].tolist() == [1.0, 2.0, 3.0]  # causal: query i sees i + 1 keys
    assert model.attn(x, cos, pad, mask=shifted)[0, :, 0].tolist() == [2.0, 3.0, 4.0]  # restored


@pytest.mark.parametrize("mask, cause", [
    (torch.ones(S, S, dtype=torch.bool).tril(1)[None, None, :T], "shifted by one"),
    (torch.ones(S, S, dtype=torch.bool).tril().t()[None, None, :T], "transposed"),
])
def test_a_fix_is_offered_only_where_the_mask_differs(mask, cause):
    model = nn.Module()
    model.attn = Attn()
    x = torch.zeros(1, T, 4)
    case = Case("batch", torch.zeros(1, T, dtype=torch.long))
    (fix,) = mask_fixes(model, "attn", Call(x, x, (x,), {"mask": mask}), case)
    assert fix.name == "attention mask: causal" and cause in fix.cause
    right = torch.ones(S, S, dtype=torch.bool).tril()[None, None, :T]
    (inside,) = mask_fixes(model, "attn", Call(x, x, (x,), {"mask": right}), case)  # the right mask is given:
    assert inside.name == "SDPA mask: causal by position" and "do not use it" in inside.cause  # only SDPA's
    assert mask_fixes(model, "attn", Call(x, x, (x,), {}), case) == []  # made inside: SDPA's own fixes there
    cached = Case("cached", torch.zeros(1, 5, dtype=torch.long), None, 2)
    (by_position,) = mask_fixes(model, "attn", Call(x, x, (x,), {}), cached)  # ... except in a cached step
    assert "makes inside" in by_position.cause and "position 2 + i" in by_position.cause


def test_padding_ignored_is_named_in_the_padded_case():
    model = nn.Module()
    model.attn = Attn()
    x = torch.zeros(B, T, 4)
    pad = torch.tensor([[1, 1, 1], [0, 1, 1]])
    causal = torch.ones(S, S, dtype=torch.bool).tril()[None, None, :T]
    (fix,) = mask_fixes(model, "attn", Call(x, x, (x,), {"mask": causal}), Case("padded", pad, pad))
    assert fix.name == "attention mask: causal + padding" and "ignores the padding" in fix.cause


class Positional(nn.Module):
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                input_pos: torch.Tensor | None = None) -> torch.Tensor:
        return input_pos if input_pos is not None else torch.arange(input_ids.shape[1])


def test_positions_are_given_from_the_mask_length_or_from_the_last_call():
    model = Positional()
    (fix,) = given_position_fixes(model)
    assert fix.name == "input_pos continues from the cache" and fix.whole_model
    ids = torch.zeros(1, 2, dtype=torch.long)
    with intercept(model, GivenPositions("input_pos")):
        assert model(ids, attention_mask=torch.ones(1, 7)).tolist() == [5, 6]
        assert model(ids).tolist() == [7, 8]  # no mask: after the last call
    assert model(ids).tolist() == [0, 1]
    assert given_position_fixes(nn.Linear(2, 2)) == []
