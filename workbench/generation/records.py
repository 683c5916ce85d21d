"""Records generation hands back: `GenerationOutput` from `generate`, `StepRecord` per session step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .protocols import TokenDecoder

REASONS = ("length", "eos", "stop_string")  # why a row stopped; index 0 also means "still running"


@dataclass(frozen=True, eq=False)
class GenerationOutput:
    """What `generate` returns. Rows are ordered prompt by prompt: row i*n + j is return j of prompt i."""

    sequences: torch.Tensor  # (B*n, T + N) long: prompt (left padding kept) then new tokens, pad after a row ends
    prompt_length: int  # T, the padded prompt width; new tokens start at this column
    new_token_counts: torch.Tensor  # (B*n,) tokens each row generated, its EOS or stop token included
    finish_reasons: tuple[str, ...]  # per row: "eos", "stop_string" or "length"
    scores: torch.Tensor | None = None  # (B*n,) beam search only: sum(log p of new tokens) / count ** alpha
    cache_bytes_allocated: int = 0  # size of the KV cache this call used (static: preallocated)

    @property
    def new_tokens(self) -> torch.Tensor:
        """(B*n, N) the generated columns only."""
        return self.sequences[:, self.prompt_length :]

    def texts(self, tokenizer: TokenDecoder) -> list[str]:
        """The generated text of each row, up to and including its EOS or stop token."""
        rows = self.new_tokens.tolist()
        return [tokenizer.decode(r[:n]) for r, n in zip(rows, self.new_token_counts.tolist())]


@dataclass(frozen=True, eq=False)
class StepRecord:
    """One step of a `GenerationSession`: the token chosen, the distribution it came from, and the cost.

    `position` is the token's index in the full sequence (prompt included); the cache holds
    `cache_length` = position + 1 positions after the step, because the step also feeds the token.
    """

    step: int  # 0 for the first generated token
    token_id: int
    token_text: str
    position: int
    token_prob: float  # probability of the chosen token under the model's distribution (temperature 1)
    candidate_ids: tuple[int, ...]  # top-k next-token candidates, most likely first
    candidate_texts: tuple[str, ...]
    candidate_probs: tuple[float, ...]
    entropy: float  # nats, of the model's next-token distribution
    cache_length: int  # positions held after the step
    cache_bytes_used: tuple[int, ...]  # per layer, after the step
    cache_bytes_allocated: tuple[int, ...]  # per layer, after the step
    step_time: float  # seconds (perf_counter; one device sync per step on CUDA)
    attention: torch.Tensor | None = None  # (L, H, S) float32 CPU: the new token's attention over the cache
    finish_reason: str | None = None  # "eos", "stop_string" or "length" when this token ended the session
    edits: tuple[str, ...] = ()  # labels of the edits (`workbench.edit`) active while the step ran

    @property
    def cache_total_used(self) -> int:
        return sum(self.cache_bytes_used)

    @property
    def cache_total_allocated(self) -> int:
        return sum(self.cache_bytes_allocated)

    def to_dict(self) -> dict[str, Any]:
        """Plain values for tables (pandas); the attention tensor is left out."""
        names = [f for f in self.__dataclass_fields__ if f != "attention"]
        row = {name: getattr(self, name) for name in names}
        row.update(cache_total_used=self.cache_total_used, cache_total_allocated=self.cache_total_allocated)
        return row
