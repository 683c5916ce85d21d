"""Attention written by hand, followed on the interception layer (`handattention`), and the fixes that change one
of its steps (`handfixes`): each fix turns a planted mistake into SDPA's result, in four ways of writing attention,
and leaves a correct attention as it was."""

from __future__ import annotations

import math

import hfzoo
import pytest
import torch
import torch.nn.functional as F
from catalogue_nanogpt import GPT, reference
from torch import nn

from workbench.compare.fixes import Fix
from workbench.compare.handattention import HandAttention
from workbench.compare.handfixes import (
    MaskBeforeSoftmax,
    RebuiltMask,
    ScaledScores,
    SoftmaxOverKeys,
    hand_attention_fixes,
    with_hand_fixes,
)
from workbench.lm.intercept import intercept

B, H, T, D = 2, 3, 5, 4
STYLES = ("nanogpt", "div_additive", "where_float32", "bmm_in_place")


class Written(nn.Module):
    """Attention of q, k, v (B, H, T, D) written by hand in one of `STYLES`, with one mistake (`bug`) or none.
    pad (B, T) 1 = token masks padding keys with the dtype's min."""

    def __init__(self, style: str, bug: str | None = None) -> None:
        super().__init__()
        self.style, self.bug = style, bug
        self.register_buffer("bias", torch.tril(torch.ones(8, 8)).view(1, 1, 8, 8))

    def allowed(self) -> torch.Tensor:
        """(T, T) bool: the causal mask, or the planted wrong one."""
        m = self.bias[0, 0, :T, :T] if self.bug != "shift" else self.bias[0, 0, 1:T + 1, :T]
        if self.bug == "transposed":
            m = m.t()
        if self.bug == "no_mask":
            m = torch.ones_like(m)
        if self.bug == "diagonal":
            m = m.tril(-1)
        return m.bool()

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pad: torch.Tensor | None = None
                ) -> torch.Tensor:
        scale = 1.0 if self.bug == "no_scale" else 1.0 / math.sqrt(D)
        ok, dim = self.allowed(), (-2 if self.bug == "axis" else -1)
        late = self.bug == "after"
        pad = None if self.bug == "pad_ignored" else pad
        if self.style == "bmm_in_place":  # (B*H, T, D), torch.bmm, in-place scale and fill
            att = torch.bmm(q.reshape(B * H, T, D), k.reshape(B * H, T, D).transpose(1, 2))
            att.mul_(scale)
            if not late:
                att.masked_fill_(~ok, float("-inf"))
            if pad is not None:
                att.masked_fill_(pad.repeat_interleave(H, 0)[:, None, :] == 0, torch.finfo(att.dtype).min)
            att = att.softmax(dim)
            att = att * ok if late else att
            return torch.bmm(att, v.reshape(B * H, T, D)).view(B, H, T, D)
        if self.style == "div_additive":  # / sqrt(D), an additive 0 / -inf mask, Tensor.softmax, torch.matmul
            att = torch.matmul(q, k.transpose(-2, -1)) / D ** 0.5 if scale != 1.0 else torch.matmul(q, k.mT)
            if not late:
                att = att + torch.zeros(T, T).masked_fill(~ok, float("-inf"))
        elif self.style == "where_float32":  # torch.where, softmax in float32 cast back
            att = torch.where(ok, (q @ k.transpose(-2, -1)) * scale, float("-inf")) if not late else \
                (q @ k.transpose(-2, -1)) * scale
        else:  # nanogpt
            att = (q @ k.transpose(-2, -1)) * scale
            if not late:
                att = att.masked_fill(ok == 0, float("-inf"))
        if pad is not None:
            att = att.masked_fill(pad[:, None, None, :] == 0, torch.finfo(att.dtype).min)
        if self.style == "where_float32":
            att = F.softmax(att, dim=dim, dtype=torch.float32).to(q.dtype)
        else:
            att = F.softmax(att, dim=dim)
        if late:
            att = att.masked_fill(~ok, 0.0)
        return F.dropout(att, 0.0) @ v


def qkv() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(B, H, T, D, generator=g) * 2 for _ in range(3))  # type: ignore[return-value]


PAD = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])


def right(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
    """SDPA's causal attention (padding keys masked; compared on real query rows only)."""
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    if pad is not None:
        mask = mask & pad.bool()[:, None, None, :]
        mask = mask | ~mask.any(-1, keepdim=True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def real(x: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
    """Rows of real queries (B, H, T, D) -> (N, D)."""
    return x.transpose(1, 2)[pad.bool()] if pad is not None else x


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("bug, fix, padded", [
    ("no_scale", lambda: ScaledScores(-0.5), False),
    ("axis", SoftmaxOverKeys, False),
    ("after", MaskBeforeSoftmax, False),
    ("shift", lambda: RebuiltMask(None, "causal"), False),
    ("transposed", lambda: RebuiltMask(None, "causal"), False),
    ("no_mask", lambda: RebuiltMask(None, "causal"), False),
    ("diagonal", lambda: RebuiltMask(None, "diagonal"), False),
    ("pad_ignored", lambda: RebuiltMask(PAD, "padding"), True),
    ("pad_ignored", lambda: RebuiltMask(PAD, "causal"), True),
])
def test_each_fix_turns_its_mistake_into_sdpa(style, bug, fix, padded):
    q, k, v = qkv()
    pad = PAD if padded else None
    wrong = Written(style, bug)
    want = real(right(q, k, v, pad), pad)
    assert not torch.allclose(real(wrong(q, k, v, pad), pad), want, atol=1e-3)  # the mistake shows
    with intercept(wrong, fix()):
        got = wrong(q, k, v, pad)
    torch.testing.assert_close(real(got, pad), want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("style", STYLES)
def test_a_correct_attention_is_followed_and_left_as_it_is(style):
    """Every fix but the scale one is a no-op on a correct attention (no false cause), and the watcher sees one."""
    q, k, v = qkv()
    clean = Written(style)
    for pad in (None, PAD):
        want = real(right(q, k, v, pad), pad)
        torch.testing.assert_close(real(clean(q, k, v, pad), pad), want, atol=1e-6, rtol=1e-5)
        for client in (SoftmaxOverKeys(), MaskBeforeSoftmax(), RebuiltMask(pad, "padding"),
                       RebuiltMask(pad, "causal"), RebuiltMask(None, "diagonal")):
            with intercept(clean, client):
                got = clean(q, k, v, pad)
            torch.testing.assert_close(real(got, pad), want, atol=1e-6, rtol=1e-5)
    watch = HandAttention()
    with intercept(clean, watch):
        clean(q, k, v)
    assert watch.seen == 1


def test_scale_one_over_d_is_undone_by_sqrt_d():
    q, k, v = qkv()
    wrong = Written("nanogpt")
    with intercept(wrong, ScaledScores(-0.5)):  # 1/D: the scale applied twice
        twice = wrong(q, k, v)
    assert not torch.allclose(twice, right(q, k, v), atol=1e-3)
    with intercept(wrong, ScaledScores(-0.5)), intercept(wrong, ScaledScores(0.5)):
        torch.testing.assert_close(wrong(q, k, v), right(q, k, v), atol=1e-6, rtol=1e-5)


def test_hand_written_attention_is_seen_in_ports_and_hf_eager_not_in_sdpa():
    ids = torch.randint(0, 90, (1, 6))
    for model, seen in ((GPT(reference()).eval(), 2), (hfzoo.build("gpt2", attn="eager"), 2),
                        (hfzoo.build("gpt2", attn="sdpa"), 0)):
        watch = HandAttention()
        with torch.no_grad(), intercept(model, watch):
            model(ids)
        assert watch.seen == seen, type(model).__name__


def test_hand_fixes_take_the_place_of_the_sdpa_fixes_of_the_same_name():
    port = GPT(reference()).eval()
    attn = port.transformer.h[0].attn
    x = torch.randn(1, 4, 32)
    sdpa = [Fix("scale x 1/sqrt(D)", "sdpa", lambda: intercept(port)), Fix("softmax in float32", "sdpa",
                                                                             lambda: intercept(port))]
    names = [f.name for f in with_hand_fixes(sdpa, port, None, lambda: attn(x, None, None))]
    assert names == [f.name for f in hand_attention_fixes(port, None)] + ["softmax in float32"]
    assert names == ["scale x 1/sqrt(D)", "scale x sqrt(D)", "softmax axis", "mask before softmax",
                     "mask: diagonal", "mask: causal", "softmax in float32"]
    assert with_hand_fixes(sdpa, port, None, lambda: F.scaled_dot_product_attention(*qkv())) == sdpa
    padded = [f.name for f in hand_attention_fixes(port, PAD)]
    assert padded.index("mask: padding") < padded.index("mask: causal")  # the more specific fix wins a tie
