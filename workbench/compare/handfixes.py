"""The fixes SDPA ports get, at attention written by hand: each changes one step of `HandAttention`'s chain.

Names follow `fixes.function_fixes` where the cause is the same ("scale x 1/sqrt(D)", "mask: causal",
"mask: padding"; "softmax in float32" is SDPA's own fix, which already rewrites `softmax` and `@`), so a user
reads one vocabulary; causes only hand-written attention can have get their own ("softmax axis", "mask before
softmax"). `with_hand_fixes` offers them where a replay of the module shows attention written by hand, in place
of the SDPA fixes of the same name.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from functools import partial
from typing import Any

import torch
from torch import nn

from ..lm.intercept import FunctionCall, intercept
from .fixes import Fix
from .handattention import Chain, HandAttention, replaced

Replay = Callable[[], Any]  # the module at the divergence, run once on the reference's input


class ScaledScores(HandAttention):
    """The scores q @ k^T times D ** power (-0.5: the missing 1/sqrt(D); +0.5: 1/D where 1/sqrt(D) is right)."""

    def __init__(self, power: float) -> None:
        super().__init__()
        self.power = power

    def at_scores(self, call: FunctionCall, D: int) -> Any:
        return call.proceed() * D ** self.power


class SoftmaxOverKeys(HandAttention):
    """The attention softmax over the keys (the last axis), whatever axis the candidate gave."""

    def at_softmax(self, call: FunctionCall, chain: Chain) -> Any:
        kwargs = {k: v for k, v in call.kwargs.items() if k != "dim"}
        return call.proceed(chain.current, -1, *call.args[2:], **kwargs)


class MaskBeforeSoftmax(HandAttention):
    """A mask the candidate applies to the probabilities moved onto the scores: the positions it zeroes are
    filled with -inf before the softmax, so the rest renormalise."""

    def at_probs_mask(self, call: FunctionCall, chain: Chain) -> Any:
        probs, logits = chain.current, chain.logits
        if logits is None:
            return call.proceed()
        kept = call.func(*replaced(call.args, probs, torch.ones_like(probs)), **call.kwargs)  # 0 where masked
        allowed = kept != 0
        return torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=chain.dim).to(probs.dtype)


class RebuiltMask(HandAttention):
    """The scores' mask rebuilt before the softmax (..., T, S), by `rule`:
    - "causal": the reference's convention, causal plus the case's padding;
    - "padding": the candidate's own mask plus the case's padding;
    - "diagonal": the candidate's own mask with each query's own position allowed.
    keys (B, S) 1 = token, or None (no padding). A query left with no key (a padding query) attends to every
    key, as SDPA's padding fix lets it attend to itself: its row is never compared, and stays finite."""

    def __init__(self, keys: torch.Tensor | None, rule: str) -> None:
        super().__init__()
        self.keys, self.rule = keys, rule

    def at_softmax(self, call: FunctionCall, chain: Chain) -> Any:
        x, scores = chain.current, chain.unmasked
        T, S = x.shape[-2], x.shape[-1]
        keys = self._keys(x)
        if self.rule == "causal":
            allowed = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(S - T)  # (T, S)
        else:
            allowed = x > torch.finfo(x.dtype).min / 2  # the candidate's own: not filled with -inf or the min
        if self.rule == "diagonal":
            own = torch.ones(T, S, dtype=torch.bool, device=x.device)
            allowed = allowed | (own.tril(S - T) & own.triu(S - T))  # (T, S): query i and key S - T + i
            keys = None
        elif keys is None and self.rule == "padding":
            return call.proceed()
        if keys is not None:
            allowed = allowed & keys
        allowed = allowed | ~allowed.any(-1, keepdim=True)
        return call.proceed(*replaced(call.args, x, scores.masked_fill(~allowed, float("-inf"))), **call.kwargs)

    def _keys(self, x: torch.Tensor) -> torch.Tensor | None:
        """The case's padding as a mask broadcast over x's (B, H, T, S) or (B*H, T, S); None where it does not fit."""
        if self.keys is None:
            return None
        B, S = self.keys.shape
        keys = self.keys.bool().to(x.device)
        if x.shape[-1] != S or x.shape[0] % B:
            return None
        if x.dim() == 4 and x.shape[0] == B:
            return keys[:, None, None, :]  # (B, 1, 1, S)
        if x.dim() == 3:
            return keys.repeat_interleave(x.shape[0] // B, dim=0)[:, None, :]  # (B*H, 1, S)
        return None


def editing(model: nn.Module, make: Callable[[], HandAttention]) -> Callable[[], AbstractContextManager[Any]]:
    """A Fix's `apply`: a client from `make` edits the hand-written attention of `model` while the fix is open (a
    new client each time, so no chain is left over from an earlier replay)."""
    return lambda: intercept(model, make())


def hand_attention_fixes(model: nn.Module, case_mask: torch.Tensor | None) -> list[Fix]:
    """The fixes for hand-written attention in `model`; case_mask (B, T) 1 = token, when the case is padded.
    Order breaks ties: a more specific fix comes before one that also closes its gap (rebuilding the whole
    mask also hides a padding mistake or a mask applied after the softmax)."""
    fixes = [
        Fix("scale x 1/sqrt(D)", "the attention scale 1/sqrt(head_dim) is missing in the candidate",
            editing(model, partial(ScaledScores, -0.5))),
        Fix("scale x sqrt(D)", "the candidate scales the attention scores by 1/head_dim (1/sqrt(head_dim) applied "
            "twice, or 1/D where the reference divides by sqrt(D))", editing(model, partial(ScaledScores, 0.5))),
        Fix("softmax axis", "the candidate's attention softmax normalizes over another axis than the keys' (the "
            "last): each query's weights do not sum to one", editing(model, SoftmaxOverKeys)),
        Fix("mask before softmax", "the candidate masks the attention probabilities after the softmax (zeroed, "
            "not renormalised) where the mask belongs on the scores before it", editing(model, MaskBeforeSoftmax)),
    ]
    if case_mask is not None and not bool(case_mask.all()):
        fixes.append(Fix("mask: padding", "the candidate ignores the padding: queries attend to padded positions",
                         editing(model, partial(RebuiltMask, case_mask, "padding"))))
    fixes.append(Fix("mask: diagonal", "the candidate's mask hides each query from its own position",
                     editing(model, partial(RebuiltMask, None, "diagonal"))))
    fixes.append(Fix("mask: causal", "the candidate's causal mask is wrong (shifted by one, transposed or "
                     "missing): rebuilt as the reference's, causal plus the case's padding, the scores agree",
                     editing(model, partial(RebuiltMask, case_mask, "causal"))))
    return fixes


def with_hand_fixes(sdpa: list[Fix], model: nn.Module, case_mask: torch.Tensor | None, replay: Replay) -> list[Fix]:
    """`sdpa` (the attention fixes for SDPA calls), with the hand-written attention fixes in place of those of the
    same name where one replay of the module under `HandAttention` completes an attention written by hand."""
    watch = HandAttention()
    try:
        with intercept(model, watch):
            replay()
    except (RuntimeError, ValueError, IndexError, TypeError):  # a module that cannot be replayed: SDPA's only
        return sdpa
    if not watch.seen:
        return sdpa
    hand = hand_attention_fixes(model, case_mask)
    names = {f.name for f in hand}
    return hand + [f for f in sdpa if f.name not in names]
