"""`generate`: batched decoding with a KV cache: greedy, sampling (temperature/top-k/top-p) or beam search.

Any causal LM works: a workbench `TransformerLM`, a transformers causal LM (through its own `Cache`:
static or dynamic, sliding-window layers included), a module returning a legacy tuple as
`past_key_values`, or a module without a cache (each step then recomputes the sequence). How each is
called is `workbench.lm.ModelAdapter`'s business; this module only decides which tokens to feed.

The prompt is checked once (validate=True at prefill); decode steps feed ids the model produced
itself, so they skip validation and its host sync. The cache is a local: it is freed on return.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import GenerationError
from ..lm import ModelAdapter
from .beam import beam_search
from .fast import decode_stepper, resolve_fast
from .prompt import check_pad, check_request, prefill
from .protocols import TokenDecoder
from .records import REASONS, GenerationOutput
from .request import GenerationRequest, build_request
from .sampling import choose
from .stopping import StopStrings


def generate(
    model: nn.Module,
    input_ids: torch.Tensor,
    request: GenerationRequest | None = None,
    *,
    attention_mask: torch.Tensor | None = None,
    tokenizer: TokenDecoder | None = None,
    generator: torch.Generator | None = None,
    cache_mode: str = "static",
    fast: bool | str | None = None,
    **settings: Any,
) -> GenerationOutput:
    """Continue `input_ids` (B, T) (or (T,)) by up to `max_new_tokens` tokens per row.

    request: the decoding settings (a `GenerationRequest`); keywords named after its fields override it,
    so `generate(model, ids, max_new_tokens=20, do_sample=True)` equals
    `generate(model, ids, GenerationRequest(max_new_tokens=20, do_sample=True))`. max_new_tokens is required.
    attention_mask: (B, T), 1 = token, 0 = left padding. Both are moved to the model's device (a
    tokenizer's CPU ids can go to a GPU model); the returned tokens live there.
    eos_token_id defaults to the tokenizer's.
    Sampling is reproducible through `seed` (a private generator) or an explicit `generator`.
    Beam search keeps `num_beams` hypotheses per prompt and ranks finished ones by
    sum(log p) / n_new ** length_penalty. Rows stop at EOS, at a stop string (needs `tokenizer`), or
    after max_new_tokens. The model runs in eval mode under no_grad; its mode is restored afterwards.
    fast: the fixed-shape decode step (a CUDA graph per step on CUDA); None = on for a TransformerLM
    on CUDA with the static cache, no beam search and max_new_tokens >= 16 (capturing the graph costs
    a few steps), True = force it (eager off CUDA), "compile" = force the `torch.compile`d step,
    False = off. Greedy tokens are the same either way; see `workbench.generation.fast`.
    """
    request = build_request(request, settings).for_tokenizer(tokenizer)
    lm = ModelAdapter(model) if isinstance(model, nn.Module) else None
    if lm is None:
        raise GenerationError(f"generate needs a causal LM (a torch nn.Module), got {type(model).__name__}.")
    input_ids, attention_mask = check_request(lm, input_ids, attention_mask, request.max_new_tokens, cache_mode)
    if generator is not None and request.seed is not None:
        raise GenerationError("pass either seed or generator, not both.")
    stop = StopStrings(tokenizer, request.stops) if request.stops else None
    check_pad(lm, request.pad_id)
    generator = generator if generator is not None else request.new_generator(input_ids.device)
    use_fast = resolve_fast(model, fast, cache_mode, request.num_beams, request.new_tokens)
    args = (lm, input_ids, attention_mask, request, cache_mode, stop)
    with eval_no_grad(model):
        return beam_search(*args) if request.num_beams > 1 else _decode(*args, generator, use_fast)


@contextlib.contextmanager
def eval_no_grad(model: nn.Module, modules: Sequence[nn.Module] | None = None) -> Iterator[None]:
    """Eval mode (no dropout) and no autograd for the duration.

    Only the modules that are in training mode are switched, and exactly those are switched back,
    so a model already in eval mode costs one scan of its modules (`modules`, a cached
    `list(model.modules())`, saves the tree walk), not two recursive `train()` calls (~2 ms per
    step for SmolLM2's 670 modules), and a mixed-mode model comes back exactly as it was.
    """
    switched = [m for m in (model.modules() if modules is None else modules) if m.training]
    for m in switched:
        m.training = False
    try:
        with torch.no_grad():
            yield
    finally:
        for m in switched:
            m.training = True


def _decode(
    lm: ModelAdapter,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    request: GenerationRequest,
    cache_mode: str,
    stop: StopStrings | None,
    generator: torch.Generator | None,
    fast: bool | str = False,
) -> GenerationOutput:
    """Greedy or sampled decoding, one token per row per forward."""
    max_new_tokens, pad, eos_ids = request.new_tokens, request.pad_id, request.eos_ids
    n = request.num_return_sequences
    if n > 1:  # several samples per prompt: repeat rows so each draws independently
        input_ids = input_ids.repeat_interleave(n, dim=0)  # (B*n, T)
        attention_mask = attention_mask.repeat_interleave(n, dim=0) if attention_mask is not None else None
    B, T = input_ids.shape
    device = input_ids.device
    cache = lm.new_cache(B, T + max_new_tokens, mode=cache_mode)
    logits = prefill(lm, cache, input_ids, attention_mask)[:, -1]  # (B, V)
    step_fn = decode_stepper(lm, cache, fast)
    new = torch.full((B, max_new_tokens), pad, dtype=torch.long, device=device)  # (B, N)
    reason = torch.zeros(B, dtype=torch.long, device=device)  # index into REASONS; 0 while running
    counts = torch.zeros(B, dtype=torch.long, device=device)
    eos = torch.tensor(eos_ids, dtype=torch.long, device=device)
    watch = bool(eos_ids) or stop is not None  # otherwise no early stop: never sync
    steps = max_new_tokens
    for step in range(max_new_tokens):
        running = reason == 0
        token = torch.where(running, choose(logits, request, generator), pad)  # (B,)
        new[:, step] = token
        counts += running.long()
        if eos.numel():
            reason = torch.where(running & torch.isin(token, eos), 1, reason)
        if stop is not None:
            reason = _stop_reasons(stop, new[:, : step + 1], reason, running)
        if watch and not bool((reason == 0).any()):
            steps = step + 1
            break
        if step + 1 < max_new_tokens:
            logits = step_fn(token[:, None])[:, -1]  # (B, V)
    return GenerationOutput(
        sequences=torch.cat((input_ids, new[:, :steps]), dim=1),
        prompt_length=T,
        new_token_counts=counts.cpu(),
        finish_reasons=tuple(REASONS[r] for r in reason.tolist()),
        cache_bytes_allocated=int(cache.bytes_allocated),
    )


def _stop_reasons(stop: StopStrings, new: torch.Tensor, reason: torch.Tensor, running: torch.Tensor) -> torch.Tensor:
    """Mark running rows whose new text now contains a stop string (host-side decode per row)."""
    rows, active = new.tolist(), (running & (reason == 0)).tolist()
    hits = [a and stop.hit(r) for r, a in zip(rows, active)]
    return torch.where(torch.tensor(hits, device=reason.device), 2, reason)
