"""The effective scale of attention scores, relative to q.k / sqrt(D), whatever the mechanism.

Implementations put the 1/sqrt(D) in different places: SDPA's default or its `scale=` argument, a multiply
after q @ k^T, queries multiplied before the call (OPT, then `scale=1.0`), q and k each multiplied by
D**-0.25, or a config multiplier (Gemma's `query_pre_attn_scalar`, muP's 1/D). What the pitfall names is the
product: how large the scores are compared with the projections' q.k / sqrt(D). So each factor is measured:

- what the attention call itself applies (SDPA's scale, or a fit of the softmax input against q' @ k'^T);
- what was applied to q and k between their projection and the attention call: the ratio of head-vector
  norms of the q' (k') the attention call received to those of the projection output it came from. A
  rotary embedding is a rotation of each head vector, so it keeps these norms; a scale multiplies them.

Shapes: B batch, H heads, T queries, S keys, D head dim.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from ..lm import config_value

CONSISTENT = 1e-3  # relative spread under which a ratio counts as one constant (float32 rotary noise is ~1e-6)


def prescale(target: torch.Tensor, candidates: Iterable[torch.Tensor]) -> float | None:
    """The constant c with |target head vector| = c |source head vector|, for the last candidate that is the
    source of `target` (B, h, S, D) up to a per-tensor scale and a rotation of each head vector; None when
    no candidate is.

    A candidate is a projection's output, (B, S, N) or (B, S, h', D) or (B, h', S, D): its N channels are read
    as N / D head vectors in any order, so fused q/k/v projections of every layout and key heads shared by
    several query heads (grouped-query attention) are found without knowing the layout.
    """
    if target.dim() != 4:
        return None
    B, h, S, D = target.shape
    if B * S < 4:  # too few vectors to tell a constant ratio from a coincidence
        return None
    want = target.detach().float().transpose(1, 2).norm(dim=-1).reshape(B * S, h)  # (B*S, h)
    if not bool((want > 0).all()):
        return None
    for cand in reversed(list(candidates)):
        c = _ratio(want, cand, B, S, D)
        if c is not None:
            return c
    return None


def _ratio(want: torch.Tensor, cand: torch.Tensor, B: int, S: int, D: int) -> float | None:
    x = cand.detach().float()
    if x.dim() == 4 and x.shape[2] == S and x.shape[1] != S:
        x = x.transpose(1, 2)  # (B, h', S, D) -> (B, S, h', D)
    if x.dim() < 3 or tuple(x.shape[:2]) != (B, S) or x[0, 0].numel() % D:
        return None
    have = x.reshape(B * S, -1, D).norm(dim=-1)  # (B*S, M) head-vector norms
    if not bool((have > 0).all()):
        return None
    ratio = want[:, :, None] / have[:, None, :]  # (B*S, h, M)
    mid = ratio.median(dim=0).values  # (h, M)
    spread = (ratio.amax(0) - ratio.amin(0)) / mid  # (h, M)
    best = spread.min(dim=1)  # for each target head, its most constant source head
    if not bool((best.values < CONSISTENT).all()):
        return None
    per_head = mid.gather(1, best.indices[:, None])[:, 0]  # (h,)
    c = float(per_head.median())
    if float((per_head.max() - per_head.min()) / c) >= CONSISTENT:
        return None  # each head scaled differently: not one scale
    return c


def fit_scale(scores: torch.Tensor, q: torch.Tensor, k_t: torch.Tensor) -> float | None:
    """alpha in softmax input = alpha * (q @ k_t) + bias, for a bias that does not vary along the query axis
    (a key-padding mask, ALiBi as BLOOM and MPT write it); None when no single alpha explains the scores.

    scores (B, H, T, S); q (B, H, T, D) and k_t (B, H, D, S), or 3-D (B*H, ., .) as bmm-based code holds them.
    Masked entries (-inf, or the dtype's minimum added) are left out.
    """
    B, H, T, S = scores.shape
    try:
        raw = (q.detach().float().reshape(B, H, T, -1) @ k_t.detach().float().reshape(B, H, -1, S))  # (B, H, T, S)
    except RuntimeError:
        return None
    s = scores.detach().float()
    keep = torch.isfinite(s) & (s.abs() <= 1e4 * (float(raw.abs().max()) + 1))
    count = keep.sum(dim=2, keepdim=True)  # (B, H, 1, S) kept queries per key
    if int((count >= 2).sum()) == 0:
        return None
    zero = torch.zeros((), device=s.device)

    def centred(x: torch.Tensor) -> torch.Tensor:  # minus the mean over kept queries of each key column
        x = torch.where(keep, x, zero)
        return torch.where(keep, x - x.sum(2, keepdim=True) / count.clamp(min=1), zero)

    ds, dr = centred(s), centred(raw)
    denom = float((dr * dr).sum())
    if denom <= 0:
        return None
    alpha = float((ds * dr).sum()) / denom
    residual = float((ds - alpha * dr).abs().max())
    if residual > CONSISTENT * max(float(ds.abs().max()), 1e-12):
        return None  # a bias that varies along queries (or a non-linear score): no single scale
    return alpha


def declared_ratio(config: Any, D: int) -> tuple[float, str] | None:
    """The score scale relative to 1/sqrt(D) that the config declares on purpose, with the field that says so."""
    qpas = config_value(config, "query_pre_attn_scalar")
    if isinstance(qpas, (int, float)) and qpas > 0:
        return math.sqrt(D / qpas), f"query_pre_attn_scalar={qpas}"
    mult = config_value(config, "attention_multiplier")
    if isinstance(mult, (int, float)) and mult > 0:
        return mult * math.sqrt(D), f"attention_multiplier={mult}"
    if config_value(config, "scale_attn_weights") is False:
        return math.sqrt(D), "scale_attn_weights=False"
    if getattr(config, "model_type", None) == "gpt_neo":  # trained without the factor; the config has no field for it
        return math.sqrt(D), "model_type=gpt_neo: GPT-Neo is trained without the 1/sqrt(head_dim) factor"
    return None
