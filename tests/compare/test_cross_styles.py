"""The mechanisms the cross-style catalogue entries rest on, each checked on its own: attention written with
einsum and a written-out softmax (`handattention`), fused tensors whose parts moved across roles (`weights`),
a norm without affine parameters (`normaffine`) and RoPE frequencies computed in forward (`ropeforward`)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from workbench.compare.handattention import HandAttention
from workbench.compare.handfixes import ScaledScores, SoftmaxOverKeys
from workbench.compare.normaffine import AffineOutput
from workbench.compare.ropeforward import Frequencies, frequencies_like
from workbench.compare.weights import match_weights
from workbench.lm.intercept import intercept


class EinsumAttention(nn.Module):
    """q, k, v (B, H, T, D) -> (B, H, T, D): einsum scores, no scale, a causal fill, softmax as exp / sum."""

    def __init__(self, shift: bool) -> None:
        super().__init__()
        self.shift = shift

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        T = q.shape[-2]
        att = torch.einsum("bhtd,bhsd->bhts", q, k)
        att = att.masked_fill(torch.ones(T, T).tril() == 0, float("-inf"))
        e = torch.exp(att - att.amax(-2, keepdim=True)) if self.shift else torch.exp(att)
        p = e / e.sum(-2, keepdim=True)  # over the queries: a softmax-axis mistake
        return torch.einsum("bhts,bhsd->bhtd", p, v)


def _qkv() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(2, 2, 5, 4, generator=g) for _ in range(3))


@pytest.mark.parametrize("shift", [True, False])
def test_einsum_attention_with_a_written_softmax_is_seen_and_fixed(shift):
    model, (q, k, v) = EinsumAttention(shift), _qkv()
    watch = HandAttention()
    with intercept(model, watch):
        plain = model(q, k, v)
    assert watch.seen == 1
    causal = torch.ones(5, 5).tril() == 0
    by_hand = torch.softmax((q @ k.transpose(-2, -1)).masked_fill(causal, float("-inf")), dim=-2) @ v
    torch.testing.assert_close(plain, by_hand)  # the written softmax is the softmax over its sum's axis
    with intercept(model, SoftmaxOverKeys()), intercept(model, ScaledScores(-0.5)):
        fixed = model(q, k, v)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(4)
    torch.testing.assert_close(fixed, torch.softmax(scores.masked_fill(causal, float("-inf")), dim=-1) @ v)


def test_an_einsum_that_is_not_a_score_product_starts_no_attention():
    a, b = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    model = nn.Identity()
    watch = HandAttention()
    with intercept(model, watch):
        model(torch.einsum("btd,btd->bt", a, b))
    assert watch.chain is None and watch.seen == 0


class Fused(nn.Module):
    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.c_attn = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        with torch.no_grad():
            self.c_attn.weight.copy_(weight)


def test_fused_parts_moved_across_roles_are_a_role_swap_not_heads_reordered():
    C = 8
    w = torch.randn(3 * C, C)
    ref = nn.ModuleDict({"h": nn.ModuleList([nn.ModuleDict({"attn": Fused(w), "mlp": nn.Linear(C, C)})])})
    order = torch.cat((torch.arange(C, 2 * C), torch.arange(C), torch.arange(2 * C, 3 * C)))
    cand = nn.ModuleDict({"h": nn.ModuleList([nn.ModuleDict({"attn": Fused(w[order]), "mlp": nn.Linear(C, C)})])})
    cand.h[0].mlp.load_state_dict(ref.h[0].mlp.state_dict())
    table = match_weights(ref, cand, (4,))
    attn = {m.candidate: m for m in table.matches if "c_attn" in m.candidate}
    assert set(attn) == {f"h.0.attn.c_attn.weight[{a}:{a + C}]" for a in (0, C, 2 * C)}
    assert attn[f"h.0.attn.c_attn.weight[0:{C}]"].reference == f"h.0.attn.c_attn.weight[{C}:{2 * C}]"
    assert {m.relation for m in attn.values()} == {"exact"}


def test_affine_output_is_the_norm_with_its_parameters():
    x, w, b = torch.randn(2, 3, 6), torch.randn(6), torch.randn(6)
    bare = nn.LayerNorm(6, elementwise_affine=False)
    full = nn.LayerNorm(6)
    with torch.no_grad():
        full.weight.copy_(w)
        full.bias.copy_(b)
    torch.testing.assert_close(AffineOutput(w, b)(bare(x)), full(x))


class PlainRope(nn.Module):
    """Frequencies computed in forward from a plain-number base and exponent d."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.base, self.d = 10000.0, d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        freqs = 1.0 / self.base ** (torch.arange(0, 8, 2, dtype=torch.float32) / self.d)
        return torch.outer(x, freqs)


def test_frequencies_computed_in_forward_are_seen_and_replaced():
    right = 1.0 / 10000.0 ** (torch.arange(0, 8, 2, dtype=torch.float32) / 8)
    assert frequencies_like(right) and not frequencies_like(torch.arange(1.0, 5.0)) and not frequencies_like(
        torch.ones(4))
    model, x = PlainRope(32), torch.arange(5.0)
    watch = Frequencies()
    with intercept(model, watch):
        model(x)
    assert len(watch.seen) == 1 and not torch.allclose(watch.seen[0][1].float(), right)
    with intercept(model, Frequencies(right)):
        torch.testing.assert_close(model(x), torch.outer(x, right))
