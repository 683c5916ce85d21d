"""What a patching sweep measures: a metric maps logits (B, T, V) to one number per batch row (B,).

A sweep stacks many patched runs into one batch, so a metric must score each row on its own: any callable
`logits (B, T, V) -> tensor (B,)` is one. The helpers here are the two the literature uses most:

- `logit_diff(correct, incorrect)`: logit of the right token minus the wrong one's (IOI, factual recall), the
  mean over the positions given (the last by default);
- `target_logprob(target)`: the log-probability of the target tokens, summed over the positions given: the
  log-probability of the whole continuation when the positions are consecutive.

A metric that reads only some positions may say so in a `positions` attribute (a tuple of ints, as both
helpers do): a sweep then runs the model's output head on those positions only (the head's matmul over the
vocabulary is a fixed cost per row that no other saving cuts), and the logits it hands the metric are NaN at
every other position.

`check_metric` is how a sweep calls a metric: anything other than a finite-shaped (B,) float tensor is refused
with an InterventionError that says what to return instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..errors import InterventionError

__all__ = ["LogitDiff", "Metric", "TargetLogProb", "check_metric", "logit_diff", "target_logprob"]

Metric = Callable[[torch.Tensor], torch.Tensor]  # logits (B, T, V) -> one value per row (B,)


def _ints(name: str, value: int | Sequence[int]) -> tuple[int, ...]:
    values = (value,) if isinstance(value, int) else tuple(value)
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise InterventionError(f"{name} must be a token id or a sequence of token ids (ints), got {value!r}.")
    return values


def _per_position(name: str, tokens: tuple[int, ...], positions: tuple[int, ...]) -> tuple[int, ...]:
    if len(tokens) == 1:
        return tokens * len(positions)
    if len(tokens) != len(positions):
        raise InterventionError(f"{name} gives {len(tokens)} tokens for {len(positions)} positions: give one token "
                                "for every position, or one for all of them.")
    return tokens


def _index(logits: torch.Tensor, positions: tuple[int, ...], tokens: tuple[int, ...], what: str) -> torch.Tensor:
    """logits[:, positions[i], tokens[i]] for each i: (B, len(positions)). Refuses positions or ids outside."""
    if logits.ndim != 3:
        raise InterventionError(f"the {what} metric reads logits shaped (B, T, V), got {tuple(logits.shape)}.")
    _, T, V = logits.shape
    bad_pos = [p for p in positions if not -T <= p < T]
    if bad_pos:
        raise InterventionError(f"position {bad_pos[0]} is outside the sequence of {T} tokens; give positions in "
                                f"[{-T}, {T}).")
    bad_ids = [t for t in tokens if not 0 <= t < V]
    if bad_ids:
        raise InterventionError(f"token id {bad_ids[0]} is outside the vocabulary of {V}; check the tokenizer.")
    pos = torch.tensor(positions, device=logits.device)
    ids = torch.tensor(tokens, device=logits.device)
    return logits[:, pos, ids]  # (B, P)


@dataclass(frozen=True)
class LogitDiff:
    """logits[correct] - logits[incorrect] at each position, averaged over the positions: (B, T, V) -> (B,)."""

    correct: tuple[int, ...]  # one token id per position (or one for all)
    incorrect: tuple[int, ...]  # likewise
    positions: tuple[int, ...] = (-1,)  # where the next token is predicted; -1 the last

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        right = _index(logits, self.positions, _per_position("correct", self.correct, self.positions), "logit_diff")
        wrong = _index(logits, self.positions, _per_position("incorrect", self.incorrect, self.positions),
                       "logit_diff")
        return (right - wrong).float().mean(dim=1)  # (B,)


@dataclass(frozen=True)
class TargetLogProb:
    """log p(target) at each position, summed over the positions: (B, T, V) -> (B,)."""

    target: tuple[int, ...]  # one token id per position (or one for all)
    positions: tuple[int, ...] = (-1,)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        tokens = _per_position("target", self.target, self.positions)
        if logits.ndim != 3:
            raise InterventionError(f"the target_logprob metric reads logits shaped (B, T, V), got "
                                    f"{tuple(logits.shape)}.")
        _index(logits[:1], self.positions, tokens, "target_logprob")  # refuses positions and ids outside
        pos = torch.tensor(self.positions, device=logits.device)
        logp = torch.log_softmax(logits[:, pos].float(), dim=-1)  # (B, P, V), only the positions scored
        ids = torch.tensor(tokens, device=logits.device)
        return logp[:, torch.arange(len(tokens), device=logits.device), ids].sum(dim=1)  # (B,)


def logit_diff(correct: int | Sequence[int], incorrect: int | Sequence[int],
               positions: int | Sequence[int] = -1) -> LogitDiff:
    """The logit difference metric: correct and incorrect token ids, one for all positions or one per position."""
    pos = _ints("positions", positions)
    return LogitDiff(_per_position("correct", _ints("correct", correct), pos),
                     _per_position("incorrect", _ints("incorrect", incorrect), pos), pos)


def target_logprob(target: int | Sequence[int], positions: int | Sequence[int] = -1) -> TargetLogProb:
    """The target-token log-probability metric, summed over the positions (one target id per position)."""
    pos = _ints("positions", positions)
    return TargetLogProb(_per_position("target", _ints("target", target), pos), pos)


def check_metric(metric: Metric, logits: torch.Tensor) -> torch.Tensor:
    """metric(logits) as a float tensor (B,), or an InterventionError that names what to return instead."""
    if not callable(metric):
        raise InterventionError(f"the metric must be a callable logits (B, T, V) -> tensor (B,), got "
                                f"{type(metric).__name__}; use workbench.interventions.logit_diff or target_logprob.")
    try:
        value = metric(logits)
    except InterventionError:
        raise
    except Exception as err:  # the user's function failed: say so, with its own error chained
        raise InterventionError(f"the metric raised {type(err).__name__}: {err}; it is called with logits shaped "
                                f"{tuple(logits.shape)} (B, T, V) and must return a float tensor (B,).") from err
    B = logits.shape[0]
    if not isinstance(value, torch.Tensor) or value.shape != (B,) or not value.is_floating_point():
        got = (f"a {value.dtype} tensor shaped {tuple(value.shape)}" if isinstance(value, torch.Tensor)
               else type(value).__name__)
        raise InterventionError(
            f"the metric returned {got} for logits shaped {tuple(logits.shape)}; it must return one float per "
            f"batch row, a tensor shaped ({B},): reduce over positions and tokens but keep dim 0, e.g. "
            "`logits[:, -1, a] - logits[:, -1, b]`, not `.mean()` or `.item()`.")
    return value
