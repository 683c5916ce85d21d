"""Choosing the next token: the strategy settings, logits processing, and distribution summaries.

`Strategy` holds every knob of a decoding strategy and validates it once, so `generate` and
`GenerationSession` share one set of checks and one set of error messages.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import GenerationError

CACHE_MODES = ("static", "growing")


@dataclass(frozen=True)
class Strategy:
    """How the next token is chosen. Validated on construction; every bad value is a GenerationError."""

    do_sample: bool = False  # False: greedy (or beam search); True: draw from the processed distribution
    temperature: float = 1.0  # divides the logits before sampling; < 1 sharpens, > 1 flattens
    top_k: int | None = None  # keep only the k most likely tokens (None or 0 = keep all)
    top_p: float = 1.0  # nucleus: keep the smallest set whose probability reaches top_p
    num_beams: int = 1  # beam width; 1 = no beam search
    length_penalty: float = 1.0  # alpha: beam scores are sum(log p) / n_new ** alpha
    num_return_sequences: int = 1  # sequences returned per prompt
    eos_token_ids: tuple[int, ...] = ()  # generation of a row ends at any of these
    stop_strings: tuple[str, ...] = ()  # generation of a row ends when its new text contains one
    seed: int | None = None  # seeds a private torch.Generator, so sampling is reproducible

    def __post_init__(self) -> None:
        if self.do_sample and not (isinstance(self.temperature, (int, float)) and self.temperature > 0):
            raise GenerationError(
                f"temperature must be > 0 when sampling, got {self.temperature!r}; use do_sample=False "
                "for greedy decoding (the limit of temperature -> 0)."
            )
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 0):
            raise GenerationError(f"top_k must be a non-negative int or None, got {self.top_k!r}.")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise GenerationError(f"top_p must lie in (0, 1], got {self.top_p!r}; 1.0 turns nucleus sampling off.")
        if not isinstance(self.num_beams, int) or self.num_beams < 1:
            raise GenerationError(f"num_beams must be a positive int, got {self.num_beams!r}.")
        if not isinstance(self.num_return_sequences, int) or self.num_return_sequences < 1:
            raise GenerationError(f"num_return_sequences must be a positive int, got {self.num_return_sequences!r}.")
        if self.num_beams > 1 and self.do_sample:
            raise GenerationError(
                "beam sampling (num_beams > 1 with do_sample=True) is not supported; "
                "use num_beams=1 to sample or do_sample=False for beam search."
            )
        if not self.do_sample and self.num_return_sequences > self.num_beams:
            raise GenerationError(
                f"num_return_sequences={self.num_return_sequences} exceeds num_beams={self.num_beams}; "
                f"use num_beams >= {self.num_return_sequences} (or do_sample=True for several samples)."
            )
        if not math.isfinite(self.length_penalty):
            raise GenerationError(f"length_penalty must be finite, got {self.length_penalty!r}.")
        if any(not isinstance(s, str) or not s for s in self.stop_strings):
            raise GenerationError(f"stop_strings must be non-empty strings, got {self.stop_strings!r}.")

    @property
    def processes_logits(self) -> bool:
        """True when temperature/top-k/top-p change the distribution that is sampled."""
        return self.temperature != 1.0 or bool(self.top_k) or self.top_p < 1.0

    def new_generator(self, device: torch.device) -> torch.Generator | None:
        """A generator on `device` seeded with `seed` (None: torch's global RNG is used)."""
        if self.seed is None:
            return None
        return torch.Generator(device=device).manual_seed(int(self.seed))


def as_eos_tuple(eos_token_id: int | Sequence[int] | None) -> tuple[int, ...]:
    """Normalise an EOS id argument (one id, several, or None) to a tuple."""
    if eos_token_id is None:
        return ()
    given: list[object] = list(eos_token_id) if isinstance(eos_token_id, (list, tuple)) else [eos_token_id]
    ids = [i for i in given if isinstance(i, int) and not isinstance(i, bool) and i >= 0]
    if len(ids) != len(given):
        raise GenerationError(f"eos_token_id must be a token id (an int >= 0), a list of them, or None; got "
                              f"{eos_token_id!r}.")
    return tuple(ids)


def process_logits(logits: torch.Tensor, strategy: Strategy) -> torch.Tensor:
    """Temperature, then top-k, then top-p on (N, V) logits; removed tokens become -inf.

    Computed in float32 so that bf16 logits do not tie spuriously in the sort.
    """
    logits = logits.float()
    if strategy.temperature != 1.0:
        logits = logits / strategy.temperature
    if strategy.top_k and strategy.top_k < logits.shape[-1]:
        kth = torch.topk(logits, strategy.top_k, dim=-1).values[:, -1:]  # (N, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if strategy.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (N, V)
        probs = torch.softmax(sorted_logits, dim=-1)
        before = probs.cumsum(-1) - probs  # probability mass strictly above each token
        drop_sorted = before >= strategy.top_p  # the top token always has before == 0, so it stays
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def choose(logits: torch.Tensor, strategy: Strategy, generator: torch.Generator | None) -> torch.Tensor:
    """Next token ids (N,) from last-position logits (N, V): argmax, or a draw after processing."""
    if not strategy.do_sample:
        return logits.argmax(dim=-1)
    probs = torch.softmax(process_logits(logits, strategy), dim=-1)  # (N, V)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of softmax(logits) along the last dim; zero-probability tokens add nothing."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp.nan_to_num(neginf=0.0)).sum(-1)
