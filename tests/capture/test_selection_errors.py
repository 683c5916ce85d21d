"""Attention selections that cannot apply (issue 17): refused before the forward when the selection alone
shows it, reported as CaptureError after the hooks are gone when it depends on shapes, never raised
inside a hook; SDPA called with 3-D (N, T, D) tensors is recorded with H=1."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from workbench.capture import trace
from workbench.errors import CaptureError
from workbench.lm.observe import original_sdpa

SDPA = F.scaled_dot_product_attention


class Heads(nn.Module):
    """A model without a config: 4-D SDPA with 2 heads, so head checks can only happen per call."""

    def __init__(self, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.proj = nn.Linear(8, 24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, 8)
        B, T, _ = x.shape
        q, k, v = self.proj(x).view(B, T, 3, self.heads, -1).permute(2, 0, 3, 1, 4)  # (B, H, T, D) each
        return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, -1)


class Flat(nn.Module):
    """A valid model that calls SDPA with 3-D (N, T, D) tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 24)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # (N, T, 8)
        q, k, v = self.proj(x).chunk(3, dim=-1)  # (N, T, 8) each
        if mask is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _clean(model: nn.Module) -> None:
    glob = nn.modules.module
    assert F.scaled_dot_product_attention is SDPA and original_sdpa() is SDPA
    assert not glob._global_forward_hooks and not glob._global_forward_pre_hooks
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(attention_heads=[-1]), "heads count from 0"),
        (dict(attention_heads=[0, 0]), "repeats an index"),
        (dict(attention_heads="0"), "must be a list of integers"),
        (dict(attention_heads=[0.5]), r"holds 0.5 \(float\)"),
        (dict(attention_heads=[]), r"selects nothing; pass None"),
        (dict(attention_layers=[-2]), "layers count from 0"),
        (dict(attention_layers=["("]), "not a valid regular expression"),
        (dict(attention_queries=slice(None, None, 0)), "step must be positive"),
        (dict(attention_queries=slice("a", None)), "slice bounds must be integers"),
        (dict(attention_queries=[True]), "use integers"),
        (dict(attention_batch=[1, 1]), "repeats an index"),
        (dict(attention_budget_bytes=-1), "attention_budget_bytes must be an integer >= 0"),
        (dict(attention_budget_bytes="1MB"), "attention_budget_bytes must be an integer >= 0"),
        (dict(samples="3"), "samples must be an integer >= 0"),
        (dict(attention="yes"), "attention must be True or False"),
    ],
)
def test_selection_errors_are_refused_before_the_forward(tiny, kwargs, message):
    with pytest.raises(CaptureError, match=message):
        trace(tiny, **kwargs)
    _clean(tiny)


def test_heads_past_the_configs_head_count_are_refused_before_the_forward(tiny):
    with pytest.raises(CaptureError, match=r"attention_heads=\[99\] names head\(s\) \[99\], but the model has 4"):
        trace(tiny, attention_heads=[99])


def test_heads_past_a_layers_heads_raise_after_the_forward_with_hooks_gone():
    model = Heads(2)
    x = torch.randn(1, 5, 8)
    with pytest.raises(CaptureError, match=r"names head\(s\) \[5\], but proj|names head\(s\) \[5\], but root"):
        with trace(model, attention_heads=[0, 5]) as tr:
            out = model(x)  # the user's forward completes: nothing raises inside the hook
    assert out.shape == (1, 5, 8)
    assert tr.records, "the records of the forward are kept"
    _clean(model)


def test_out_of_range_batch_rows_raise_after_the_forward(tiny):
    with pytest.raises(CaptureError, match=r"attention_batch=3 names row\(s\) \[3\], but the forward ran on a batch "
                                           r"of 2"):
        with trace(tiny, attention=True, attention_batch=3):
            logits = tiny(torch.randint(0, 256, (2, 4)))
    assert torch.isfinite(logits).all()
    _clean(tiny)


def test_negative_batch_rows_count_from_the_end(tiny):
    with trace(tiny, attention=True, attention_batch=-1) as tr:
        tiny(torch.randint(0, 256, (3, 4)))
    assert [a.batch for a in tr.attention] == [[2], [2]]


def test_out_of_range_queries_warn_instead_of_giving_empty_maps(tiny):
    with pytest.warns(UserWarning, match=r"attention_queries=\[50\] selects none of them"):
        with trace(tiny, attention_queries=[50]) as tr:
            tiny(torch.randint(0, 256, (1, 4)))
    assert tr.attention == []  # no record with an empty map
    with pytest.warns(UserWarning, match=r"misses \[50\]"):
        with trace(tiny, attention_queries=[0, 50]) as tr:
            tiny(torch.randint(0, 256, (1, 4)))
    assert [a.queries for a in tr.attention] == [[0], [0]]


def test_in_range_selection_does_not_warn(tiny):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with trace(tiny, attention_heads=[1], attention_queries=[-1], attention_batch=0) as tr:
            tiny(torch.randint(0, 256, (1, 4)))
    assert [a.heads for a in tr.attention] == [[1], [1]] and tr.attention[0].queries == [3]


def test_sdpa_with_3d_tensors_is_recorded_with_one_head():
    torch.manual_seed(0)
    model = Flat()
    x = torch.randn(3, 5, 8)
    with trace(model, attention=True, attention_batch=None) as tr:
        out = model(x)
    assert out.shape == (3, 5, 8)
    (rec,) = tr.attention
    assert rec.full_shape == [3, 1, 5, 5] and rec.batch == [0, 1, 2] and rec.heads == [0]
    q, k, _ = model.proj(x).chunk(3, dim=-1)
    causal = torch.ones(5, 5).tril().bool()
    ref = torch.softmax((q @ k.transpose(-2, -1) / 8**0.5).masked_fill(~causal, float("-inf")), -1)  # (N, T, S)
    assert torch.allclose(rec.map[:, 0].float(), ref.detach(), atol=2e-3)
    _clean(model)


def test_sdpa_with_a_3d_mask_is_recorded_per_row():
    torch.manual_seed(0)
    model = Flat()
    x = torch.randn(2, 4, 8)
    mask = torch.ones(2, 4, 4, dtype=torch.bool)
    mask[1, :, 0] = False  # row 1 never looks at key 0
    with trace(model, attention=True, attention_batch=None) as tr:
        model(x, mask)
    (rec,) = tr.attention
    assert (rec.map[1, 0, :, 0] == 0).all() and (rec.map[0, 0, :, 0] > 0).all()
