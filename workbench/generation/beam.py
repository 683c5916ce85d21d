"""Beam search: keep the `num_beams` best partial sequences per prompt, ranked by summed log-probability.

A hypothesis ends at EOS (or a stop string) and is then scored sum(log p) / n_new ** alpha, where
n_new counts its new tokens including the final one; beams still running at max_new_tokens are
scored the same way. The prompt is prefilled once per prompt and the cache is then repeated per beam.
Token bookkeeping is host-side (lists), so each step costs one device->host copy of 2 * num_beams
candidates per prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..lm import ModelAdapter
from .prompt import prefill
from .records import GenerationOutput
from .request import GenerationRequest
from .stopping import StopStrings


@dataclass(frozen=True)
class Hypothesis:
    score: float  # length-normalised: logprob / len(tokens) ** alpha
    logprob: float  # summed log-probability of the new tokens
    tokens: tuple[int, ...]  # new tokens only
    reason: str  # "eos", "stop_string" or "length"


class Finished:
    """The best `size` finished hypotheses of one prompt."""

    def __init__(self, size: int, alpha: float, max_new: int) -> None:
        self.size, self.alpha, self.max_new = size, alpha, max_new
        self.items: list[Hypothesis] = []

    def add(self, logprob: float, tokens: tuple[int, ...], reason: str) -> None:
        score = logprob / len(tokens) ** self.alpha
        self.items.append(Hypothesis(score, logprob, tokens, reason))
        self.items.sort(key=lambda h: h.score, reverse=True)
        del self.items[self.size :]

    def is_done(self, best_running_logprob: float, length: int) -> bool:
        """No running beam can still beat the worst kept hypothesis (a bound, not a heuristic)."""
        if len(self.items) < self.size:
            return False
        # log-probs only fall as tokens are added; alpha > 0 rewards length, so the best a running
        # beam can reach is its current sum spread over max_new tokens
        reach = self.max_new if self.alpha > 0 else length
        return self.items[-1].score >= best_running_logprob / reach**self.alpha


def beam_search(
    lm: ModelAdapter,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    request: GenerationRequest,
    cache_mode: str,
    stop: StopStrings | None,
) -> GenerationOutput:
    """Beam search over (B, T) prompts; returns a GenerationOutput with scores (B * num_return_sequences,).

    `request` gives the width, the length penalty, the EOS and pad ids and max_new_tokens (EOS ids as
    resolved: `generate` has replaced "tokenizer" by the tokenizer's id already).
    """
    B, T = input_ids.shape
    max_new_tokens, pad = request.new_tokens, request.pad_id
    nb, eos = request.num_beams, set(request.eos_ids)
    cache = lm.new_cache(B, T + max_new_tokens, mode=cache_mode)
    logits = prefill(lm, cache, input_ids, attention_mask)[:, -1]  # (B, V)
    expand = torch.arange(B, device=input_ids.device).repeat_interleave(nb)  # (B*nb,)
    cache.reorder(expand)
    logits = logits[expand]  # (B*nb, V)
    running = torch.zeros(B, nb, device=logits.device)  # summed log-probs per beam
    running[:, 1:] = float("-inf")  # all beams start identical: let only the first one expand
    beams: list[tuple[int, ...]] = [()] * (B * nb)
    finished = [Finished(nb, request.length_penalty, max_new_tokens) for _ in range(B)]
    done = [False] * B
    for step in range(max_new_tokens):
        V = logits.shape[-1]
        logp = torch.log_softmax(logits.float(), dim=-1).view(B, nb, V)
        top, idx = (running[..., None] + logp).view(B, nb * V).topk(2 * nb, dim=-1)  # (B, 2nb)
        rows: list[int] = []
        tokens: list[int] = []
        sums: list[float] = []
        for b, (scores_b, idx_b) in enumerate(zip(top.tolist(), idx.tolist())):
            if done[b]:  # keep feeding pad so shapes stay fixed; nothing here is read again
                rows += range(b * nb, (b + 1) * nb)
                tokens += [pad] * nb
                sums += [0.0] * nb
                continue
            picked = _expand_prompt(b, scores_b, idx_b, V, nb, beams, eos, stop, finished[b])
            rows += [r for r, _, _ in picked]
            tokens += [t for _, t, _ in picked]
            sums += [s for _, _, s in picked]
            done[b] = finished[b].is_done(picked[0][2], step + 1)
        beams = [beams[r] + (t,) for r, t in zip(rows, tokens)]
        if all(done):
            break
        index = torch.tensor(rows, device=input_ids.device)
        running = torch.tensor(sums, device=logits.device).view(B, nb)
        cache.reorder(index)
        if step + 1 < max_new_tokens:
            token = torch.tensor(tokens, device=input_ids.device)[:, None]  # (B*nb, 1)
            logits = lm.step(token, cache)[:, -1]  # (B*nb, V)
    for b in range(B):
        if not done[b]:
            for j, s in enumerate(running[b].tolist()):
                if s > float("-inf"):
                    finished[b].add(s, beams[b * nb + j], "length")
    chosen = [h for f in finished for h in f.items[: request.num_return_sequences]]
    width = max(len(h.tokens) for h in chosen)
    new = torch.full((len(chosen), width), pad, dtype=torch.long)
    for i, h in enumerate(chosen):
        new[i, : len(h.tokens)] = torch.tensor(h.tokens)
    prompt = input_ids.repeat_interleave(request.num_return_sequences, dim=0)  # (B*n, T)
    return GenerationOutput(
        sequences=torch.cat((prompt, new.to(prompt.device)), dim=1),
        prompt_length=T,
        new_token_counts=torch.tensor([len(h.tokens) for h in chosen]),
        finish_reasons=tuple(h.reason for h in chosen),
        scores=torch.tensor([h.score for h in chosen]),
        cache_bytes_allocated=int(cache.bytes_allocated),
    )


def _expand_prompt(
    b: int, scores: list[float], idx: list[int], V: int, nb: int, beams: list[tuple[int, ...]], eos: set[int],
    stop: StopStrings | None, finished: Finished,
) -> list[tuple[int, int, float]]:
    """Walk one prompt's 2*nb best candidates: EOS/stop ones become finished hypotheses (when they
    rank within the first nb, as a beam would), the rest fill the nb running beams.

    Returns [(source row, token, summed log-prob)] of length nb, best first.
    """
    picked: list[tuple[int, int, float]] = []
    for rank, (s, flat) in enumerate(zip(scores, idx)):
        if s == float("-inf"):
            break
        row, tok = b * nb + flat // V, flat % V
        tokens = beams[row] + (tok,)
        reason = "eos" if tok in eos else ("stop_string" if stop is not None and stop.hit(tokens) else None)
        if reason is not None:
            if rank < nb:
                finished.add(s, tokens, reason)
            continue
        picked.append((row, tok, s))
        if len(picked) == nb:
            break
    while len(picked) < nb:  # fewer live candidates than beams (tiny vocab or many EOS ids)
        picked.append((b * nb, picked[0][1] if picked else 0, float("-inf")))
    return picked
