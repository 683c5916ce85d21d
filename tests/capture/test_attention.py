"""Attention capture: workbench hook sites, HF SDPA interception parity, hand-written softmax,
selection, per-head metrics and the byte budget."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from workbench.capture import trace


def _check_causal_rows(m: torch.Tensor) -> None:
    """m (b, h, T, T): rows sum to 1 and nothing above the diagonal."""
    assert torch.allclose(m.float().sum(-1), torch.ones(m.shape[:-1]), atol=5e-3)
    assert m.float().triu(1).abs().max() == 0


def test_workbench_hook_maps_equal_reference(tiny, eager_probs):
    ids = torch.randint(0, 256, (2, 9))
    with trace(tiny, attention=True) as tr:
        tiny(ids)
    assert [a.source for a in tr.attention] == ["hook", "hook"]
    assert [a.module for a in tr.attention] == ["blocks.0.attn", "blocks.1.attn"]
    for a in tr.attention:
        assert a.map.dtype == torch.float16 and a.map.device.type == "cpu"
        assert list(a.map.shape) == [1, tiny.config.n_heads, 9, 9] and a.batch == [0]
        _check_causal_rows(a.map)
        assert max(a.metrics["future_max"]) == 0.0
    ref = eager_probs(tiny, ids, layer=1)[:1]
    torch.testing.assert_close(tr.attention[1].map.float(), ref, atol=1e-3, rtol=0)
    assert all(b.attn.impl == "auto" and not b.attn.uses_eager for b in tiny.blocks)


@pytest.mark.parametrize("fixture", ["hf_llama", "hf_gpt2"])
@pytest.mark.parametrize("padded", [False, True])
def test_hf_sdpa_interception_matches_eager_output_attentions(fixture, padded, request):
    model = request.getfixturevalue(fixture)
    assert model.config._attn_implementation == "sdpa"
    torch.manual_seed(1)
    ids = torch.randint(0, 128, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.long)
    if padded:
        mask[1, :3] = 0  # left padding on row 1
    with trace(model, attention=True, attention_batch=None) as tr:
        model(ids, attention_mask=mask)
    assert [a.source for a in tr.attention] == ["sdpa", "sdpa"]
    model.set_attn_implementation("eager")
    try:
        ref = model(ids, attention_mask=mask, output_attentions=True).attentions
    finally:
        model.set_attn_implementation("sdpa")
    for a, r in zip(tr.attention, ref):
        assert a.layer == tr.attention.index(a)
        torch.testing.assert_close(a.map[0].float(), r[0], atol=1e-3, rtol=0)
        torch.testing.assert_close(a.map[1, :, 3:].float(), r[1, :, 3:], atol=1e-3, rtol=0)  # real rows
        if padded:
            assert a.map[1, :, 3:, :3].abs().max() == 0  # padding keys get no weight
        assert max(a.metrics["future_max"]) < 1e-6


def test_selection_layers_heads_queries_batch(hf_llama):
    ids = torch.randint(0, 128, (3, 8))
    with trace(hf_llama, attention_layers=[1], attention_heads=[0, 2], attention_queries=[-1, 4],
               attention_batch=2) as tr:
        hf_llama(ids)
    (a,) = tr.attention
    assert (a.layer, a.module) == (1, "model.layers.1.self_attn")
    assert a.batch == [2] and a.heads == [0, 2] and a.queries == [4, 7]
    assert list(a.map.shape) == [1, 2, 2, 8]
    assert len(a.metrics["entropy"]) == 4  # metrics cover every head
    with trace(hf_llama, attention=True, attention_batch=None) as full:
        hf_llama(ids)
    torch.testing.assert_close(a.map, full.attention[1].map[2:3, [0, 2]][:, :, [4, 7]])


def test_workbench_layer_selection_hooks_only_that_layer(tiny):
    with trace(tiny, attention_layers=["blocks.1.attn"]) as tr:
        tiny(torch.randint(0, 256, (1, 5)))
    assert [(a.layer, a.module) for a in tr.attention] == [(1, "blocks.1.attn")]


class HandWritten(nn.Module):
    """Own attention with a hand-written softmax (no SDPA), as many users write it."""

    def __init__(self, d: int = 16, h: int = 2) -> None:
        super().__init__()
        self.h = h
        self.qkv = nn.Linear(d, 3 * d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.h, C // self.h).permute(2, 0, 3, 1, 4)  # (B, H, T, D) each
        s = q @ k.transpose(-2, -1) / math.sqrt(C // self.h)
        s = s.masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf"))
        p = F.softmax(s, dim=-1)
        self.last = p.detach()
        return (p @ v).transpose(1, 2).reshape(B, T, C)


def test_hand_written_softmax_captured_and_attributed():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), HandWritten())
    with trace(model, attention=True) as tr:
        model(torch.randn(2, 6, 16))
    (a,) = tr.attention
    assert a.source == "softmax" and a.module == "1"
    torch.testing.assert_close(a.map.float(), model[1].last[:1], atol=1e-3, rtol=0)
    _check_causal_rows(a.map)


def test_metrics_on_known_pattern():
    """Previous-token attention: prev mass 1, distance 1, entropy 0 (row 0 attends to itself)."""
    T = 6

    class PrevToken(nn.Module):
        def forward(self, x):
            s = torch.full((1, 1, T, T), float("-inf"))
            s[0, 0, 0, 0] = 0.0
            for i in range(1, T):
                s[0, 0, i, i - 1] = 0.0
            return x + s.softmax(-1).sum()

    with trace(PrevToken(), attention=True) as tr:
        PrevToken()(torch.zeros(1))
    assert tr.attention == []  # a module outside the traced model is not attributed to it
    model = PrevToken()
    with trace(model, attention=True) as tr:
        model(torch.zeros(1))
    m = {k: v[0] for k, v in tr.attention[0].metrics.items()}
    assert m["entropy"] == pytest.approx(0.0, abs=1e-6)
    assert m["prev"] == pytest.approx(1.0)  # over the T-1 rows that have a previous token
    assert m["distance"] == pytest.approx((T - 1) / T)
    assert m["sink"] == pytest.approx(2 / T)  # rows 0 and 1 put all weight on key 0
    assert m["diag"] == pytest.approx(1 / T)
    assert m["future_max"] == 0.0


def test_future_leak_is_detected():
    class Leaky(nn.Module):
        def forward(self, x):
            s = torch.zeros(1, 2, 4, 4)  # no causal mask at all
            return x + s.softmax(-1).sum()

    model = Leaky()
    with trace(model, attention=True) as tr:
        model(torch.zeros(1))
    assert tr.attention[0].metrics["future_max"] == pytest.approx([0.25, 0.25])


def test_budget_downsamples_then_skips(hf_gpt2):
    ids = torch.randint(0, 128, (1, 32))
    full_bytes = 4 * 32 * 32 * 2  # heads x T x S x float16
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with trace(hf_gpt2, attention=True, attention_budget_bytes=full_bytes + full_bytes // 4) as tr:
            hf_gpt2(ids)
    a0, a1 = tr.attention
    assert a0.downsample == [1, 1] and a0.stored
    assert a1.downsample == [2, 2] and list(a1.map.shape) == [1, 4, 16, 16]
    assert sum(a.map_bytes for a in tr.attention) <= full_bytes + full_bytes // 4
    assert torch.allclose(a1.map.float().sum(-1), torch.ones(1, 4, 16), atol=5e-3)  # key sums keep mass
    assert any("attention_budget_bytes" in str(w.message) for w in caught)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with trace(hf_gpt2, attention=True, attention_budget_bytes=4) as tr:
            hf_gpt2(ids)
    assert all(not a.stored and a.map is None for a in tr.attention)
    assert all(len(a.metrics["entropy"]) == 4 for a in tr.attention)  # metrics survive skipping


def test_patches_restored_after_trace(hf_gpt2):
    before = (F.scaled_dot_product_attention, F.softmax, torch.softmax, torch.Tensor.softmax)
    with pytest.raises(RuntimeError, match="boom"), trace(hf_gpt2, attention=True):
        assert F.scaled_dot_product_attention is not before[0]
        raise RuntimeError("boom")
    assert (F.scaled_dot_product_attention, F.softmax, torch.softmax, torch.Tensor.softmax) == before
    assert "softmax" not in torch.Tensor.__dict__


def test_hf_eager_softmax_path_matches_output_attentions(hf_gpt2):
    ids = torch.randint(0, 128, (1, 8))
    hf_gpt2.set_attn_implementation("eager")
    try:
        with trace(hf_gpt2, attention=True) as tr:
            ref = hf_gpt2(ids, output_attentions=True).attentions
    finally:
        hf_gpt2.set_attn_implementation("sdpa")
    assert [a.source for a in tr.attention] == ["softmax", "softmax"]
    assert [a.module for a in tr.attention] == ["transformer.h.0.attn", "transformer.h.1.attn"]
    for a, r in zip(tr.attention, ref):
        torch.testing.assert_close(a.map.float(), r, atol=1e-3, rtol=0)


def test_decode_step_with_cache_uses_query_offset(tiny):
    ids = torch.randint(0, 256, (1, 6))
    cache = tiny.new_cache(1, 16)
    with torch.no_grad():
        tiny(ids[:, :5], cache=cache)
        with trace(tiny, attention=True) as tr:
            tiny(ids[:, 5:], cache=cache)
    a = tr.attention[0]
    assert a.full_shape[2] == 1 and a.full_shape[3] >= 6  # a static cache may expose all 16 slots
    assert a.query_offset == 5 and a.key_length == 6 and a.queries == [0]
    assert torch.allclose(a.map.float().sum(-1), torch.ones(1, 4, 1), atol=5e-3)
    assert max(a.metrics["future_max"]) == 0.0


def test_sdpa_arguments_name_positional_and_keyword_calls_alike():
    from workbench.lm.observe import sdpa_arguments

    q, k, v, m = (torch.zeros(1) for _ in range(4))
    positional = sdpa_arguments((q, k, v, m, 0.0, False, 0.5), {"enable_gqa": True})
    keyword = sdpa_arguments((q,), {"key": k, "value": v, "attn_mask": m, "dropout_p": 0.0, "is_causal": False,
                                    "scale": 0.5, "enable_gqa": True})
    assert positional.keys() == keyword.keys() and positional["key"] is k and keyword["attn_mask"] is m
    assert positional["scale"] == keyword["scale"] == 0.5 and positional["enable_gqa"] is True
    assert "scale" not in sdpa_arguments((q, k, v), {})  # left to SDPA's default, 1/sqrt(D)


def _reference_metrics(p, qpos):
    """Per-head metric sums and counts, written plainly (one metric at a time) to pin the fused pass."""
    from workbench.capture.records import HEAD_METRICS

    b, H, t, S = p.shape
    acc = torch.zeros(len(HEAD_METRICS), 2, H)
    kpos = torch.arange(S)
    acc[0, 0] = -torch.special.xlogy(p, p).sum(-1).sum((0, 2))
    acc[1, 0] = (p * (qpos[:, None] - kpos[None, :]).abs().float()).sum(-1).sum((0, 2))
    acc[2, 0] = p[..., 0].sum((0, 2))
    acc[:3, 1] = b * t
    for i, target in ((3, qpos - 1), (4, qpos)):
        ok = (target >= 0) & (target < S)
        picked = p.gather(-1, target.clamp(0, S - 1).view(1, 1, t, 1).expand(b, H, t, 1))[..., 0]
        acc[i, 0] = (picked * ok).sum((0, 2))
        acc[i, 1] = ok.sum() * b
    acc[5, 0] = (p * (kpos[None, :] > qpos[:, None])).amax(dim=(0, 2, 3))
    acc[5, 1] = b * t
    return acc


@pytest.mark.parametrize("causal", [True, False])
def test_fused_head_metrics_equal_the_plain_computation(causal):
    from workbench.capture.attention import _accumulate

    torch.manual_seed(0)
    b, H, t, S, offset = 2, 3, 5, 7, 2
    s = torch.randn(b, H, t, S)
    qpos = torch.arange(t) + offset
    if causal:
        s = s.masked_fill(torch.arange(S)[None, :] > qpos[:, None], float("-inf"))
    p = torch.softmax(s, -1)
    acc = torch.zeros(6, 2, H)
    _accumulate(acc, p[:, :, :3], qpos[:3])  # two chunks of query rows, as the collector feeds them
    _accumulate(acc, p[:, :, 3:], qpos[3:])
    torch.testing.assert_close(acc, _reference_metrics(p, qpos), atol=1e-5, rtol=1e-5)


class _Sdpa(nn.Module):
    def __init__(self, mask=None, causal=False, gqa=False):
        super().__init__()
        self.mask, self.causal, self.gqa = mask, causal, gqa

    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask, is_causal=self.causal,
                                              enable_gqa=self.gqa)


@pytest.mark.parametrize("kind", ["causal", "bool", "float", "gqa"])
def test_sdpa_computed_from_its_probabilities_matches_sdpa(kind):
    """All rows selected on the CPU in float32: the call is computed once as softmax(scores) @ v in place of
    SDPA; its output equals SDPA's to float32 rounding and the stored maps are those probabilities."""
    from workbench.lm import observe

    torch.manual_seed(0)
    B, H, K, T, D = 2, 4, 2 if kind == "gqa" else 4, 6, 8
    q, k, v = torch.randn(B, H, T, D), torch.randn(B, K, T, D), torch.randn(B, K, T, D)
    keep = torch.ones(T, T, dtype=torch.bool).tril()
    mask = {"bool": keep, "float": torch.zeros(T, T).masked_fill(~keep, -1e9)}.get(kind)
    module = _Sdpa(mask, causal=kind in ("causal", "gqa"), gqa=kind == "gqa").eval()
    expected = module(q, k, v)
    seen = []
    original = observe._sdpa_in_place
    observe._sdpa_in_place = lambda call, value: seen.append(1) or original(call, value)
    try:
        with torch.no_grad(), trace(module, attention=True, attention_batch=None) as tr:
            out = module(q, k, v)
    finally:
        observe._sdpa_in_place = original
    assert seen, "the call was not computed in place"
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)
    kk = k.repeat_interleave(H // K, dim=1)
    future = torch.zeros(T, T).masked_fill(~keep, -math.inf)
    probs = torch.softmax((q @ kk.transpose(-2, -1)) / math.sqrt(D) + future, -1)
    torch.testing.assert_close(tr.attention[0].map.float(), probs, atol=1e-3, rtol=0)


@pytest.mark.parametrize("H, K, T, S", [(4, 4, 6, 6), (6, 2, 5, 9), (4, 1, 7, 4)])
def test_causal_scores_equal_scaled_masked_product(H, K, T, S):
    """The all-rows causal scores (one GEMM carrying the scale and the mask) equal scale * q k^T with keys
    after each query row (SDPA's top-left alignment) at -inf, grouped heads paired as repeat_interleave."""
    from workbench.lm.observe import SdpaCall

    torch.manual_seed(0)
    q, k, v = torch.randn(2, H, T, 8), torch.randn(2, K, S, 8), torch.randn(2, K, S, 8)
    call = SdpaCall.from_call((q, k, v), {"is_causal": True, "scale": 0.3, "enable_gqa": K != H})
    kk = k.repeat_interleave(H // K, dim=1)
    future = torch.arange(S)[None, :] > torch.arange(T)[:, None]
    expected = (0.3 * q @ kk.transpose(-2, -1)).masked_fill(future, -math.inf)
    got = call.scores()
    assert got.shape == (2, H, T, S)
    assert torch.equal(got.isneginf(), expected.isneginf())
    torch.testing.assert_close(got.masked_fill(future, 0), expected.masked_fill(future, 0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(call.scores(rows=torch.arange(T)), got, atol=1e-5, rtol=1e-5)  # the per-row path
