"""Choosing the next token: logits processing as a `GenerationRequest` asks, and distribution summaries.

The settings themselves, and their validation, live in `request.py`, so `generate`, `beam_search` and
`GenerationSession` share one set of checks and one set of error messages.
"""

from __future__ import annotations

import torch

from .request import GenerationRequest

CACHE_MODES = ("static", "growing")


def process_logits(logits: torch.Tensor, request: GenerationRequest) -> torch.Tensor:
    """Temperature, then top-k, then top-p on (N, V) logits; removed tokens become -inf.

    Computed in float32 so that bf16 logits do not tie spuriously in the sort.
    """
    logits = logits.float()
    if request.temperature != 1.0:
        logits = logits / request.temperature
    if request.top_k and request.top_k < logits.shape[-1]:
        kth = torch.topk(logits, request.top_k, dim=-1).values[:, -1:]  # (N, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if request.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (N, V)
        probs = torch.softmax(sorted_logits, dim=-1)
        before = probs.cumsum(-1) - probs  # probability mass strictly above each token
        drop_sorted = before >= request.top_p  # the top token always has before == 0, so it stays
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def choose(logits: torch.Tensor, request: GenerationRequest, generator: torch.Generator | None) -> torch.Tensor:
    """Next token ids (N,) from last-position logits (N, V): argmax, or a draw after processing."""
    if not request.do_sample:
        return logits.argmax(dim=-1)
    probs = torch.softmax(process_logits(logits, request), dim=-1)  # (N, V)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of softmax(logits) along the last dim; zero-probability tokens add nothing."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp.nan_to_num(neginf=0.0)).sum(-1)
