"""`GenerationSession`: generate one token at a time and record everything a person wants to watch.

The prompt is prefilled once, at construction; each `step()` chooses a token from the pending
distribution and feeds exactly that one token, so the cache grows by one position per step and the
prompt is never recomputed (`reset()` rewinds a workbench cache instead of refilling it). Any causal LM
works, through `workbench.lm.ModelAdapter`; the new token's attention comes from the observation layer
(`workbench.lm.observe`), so SDPA models show it too. The widgets in `workbench.widgets` drive this
class; its `StepRecord`s are what they draw.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import GenerationError
from ..lm import ForeignCache, ModelAdapter
from ..lm.edits import Edit, active_edits, edit
from ..lm.observe import SdpaCall, pattern_sites, watch_attention
from ..model.cache import KVCache
from .fast import Step, decode_stepper, resolve_fast
from .generate import eval_no_grad
from .prompt import prefill
from .protocols import TokenizerLike
from .records import StepRecord
from .request import GenerationRequest, build_request
from .sampling import CACHE_MODES, choose, entropy
from .stopping import StopStrings


class GenerationSession:
    """Stepwise generation for one prompt (batch 1), with per-step records.

    request: the decoding settings (a `GenerationRequest`); keywords named after its fields override it
    (do_sample, temperature, top_k, top_p, seed, eos_token_id: default the tokenizer's, None disables
    EOS; stop_strings; max_new_tokens: the session ends after that many, None = no limit). A session
    decodes one sequence, so num_beams and num_return_sequences must be 1, and it pads nothing
    (pad_token_id and length_penalty are not used). With capture_attention=True each record carries the
    new token's attention (L, H, S); the hooks that capture it exist only during a step.
    fast: decode with the fixed-shape step (see `workbench.generation.fast`); None = on for a
    TransformerLM on CUDA with a static cache, "compile" = the `torch.compile`d step. Records
    (tokens, cache statistics) are the same; a step with attention capture on runs the plain
    forward, since its hooks must fire.
    edits: edit specs (`workbench.Zero`, `workbench.Add`, ...) applied to the prefill and every step, as an
    enclosing `with workbench.edit(model, ...)` would be; each record names the edits active in its step
    (`StepRecord.edits`: the session's own, then any enclosing block's).
    """

    # Set by _start (the prompt's prefill); reset() rewinds the ones that describe the run so far.
    prompt_ids: list[int]
    prompt_length: int
    prompt_attention: torch.Tensor | None
    finish_reason: str | None
    _cache: KVCache | ForeignCache | None
    _step_fn: Step
    _logits: torch.Tensor  # (1, V) the pending distribution
    _prefill_logits: torch.Tensor  # (1, V) after the prompt
    _generated: list[int]
    _history: list[StepRecord]
    _generator: torch.Generator | None

    def __init__(
        self,
        model: nn.Module,
        tokenizer: TokenizerLike,
        prompt: str | Sequence[int] | torch.Tensor,
        request: GenerationRequest | None = None,
        *,
        capture_attention: bool = False,
        top_k_candidates: int = 10,
        cache_mode: str = "static",
        reserve: int = 64,
        fast: bool | str | None = None,
        edits: Sequence[Edit] = (),
        **settings: Any,
    ) -> None:
        request = build_request(request, settings)
        if request.num_beams > 1 or request.num_return_sequences > 1:
            raise GenerationError(
                f"a GenerationSession decodes one sequence greedily or by sampling, got num_beams="
                f"{request.num_beams} and num_return_sequences={request.num_return_sequences}; use 1 for both "
                "here, or workbench.generate for beam search and several sequences."
            )
        if tokenizer is None or not callable(getattr(tokenizer, "decode", None)):
            raise GenerationError("a GenerationSession needs a tokenizer (with .encode/.decode) to show text.")
        if cache_mode not in CACHE_MODES:
            raise GenerationError(f"cache_mode={cache_mode!r} is unknown; use one of {CACHE_MODES}.")
        if not isinstance(top_k_candidates, int) or top_k_candidates < 1:
            raise GenerationError(f"top_k_candidates must be a positive int, got {top_k_candidates!r}.")
        self.request = request.for_tokenizer(tokenizer)
        if not isinstance(model, nn.Module):
            raise GenerationError("a GenerationSession needs a causal LM (a torch nn.Module), got "
                                  f"{type(model).__name__}.")
        self.model = model
        self.edits = tuple(edits)
        for e in self.edits:
            if not isinstance(e, Edit):
                raise GenerationError(f"edits must be edit specs (workbench.Zero, workbench.Add, ...), got "
                                      f"{type(e).__name__}.")
        self.lm = ModelAdapter(model, tokenizer)
        self.tokenizer = tokenizer
        self.capture_attention, self.top_k_candidates = capture_attention, top_k_candidates
        self.cache_mode, self.reserve = cache_mode, max(1, int(reserve))
        self.fast = resolve_fast(model, fast, cache_mode)
        self._module_list = list(model.modules())  # scanned for training mode at every step
        self._stop = StopStrings(tokenizer, self.request.stops) if self.request.stops else None
        self._hook_sites = pattern_sites(model) if capture_attention else []
        self._start(prompt)

    # --- state a widget reads ------------------------------------------------------------------
    @property
    def cache(self) -> KVCache | ForeignCache:
        """The live KV cache (prompt + fed tokens)."""
        if self._cache is None:  # the old cache is freed before the new one is made: that step failed
            raise GenerationError("the session has no cache: the last reset(prompt) failed while making a new one "
                                  "(out of memory?); call reset(prompt) again, or start a new session.")
        return self._cache

    @property
    def history(self) -> tuple[StepRecord, ...]:
        return tuple(self._history)

    @property
    def generated_ids(self) -> list[int]:
        return list(self._generated)

    @property
    def tokens(self) -> list[int]:
        """Prompt ids followed by generated ids."""
        return self.prompt_ids + self._generated

    @property
    def token_texts(self) -> list[str]:
        """One label per token of `tokens`, for highlighting the newest one."""
        return [self.tokenizer.decode([t]) for t in self.tokens]

    @property
    def text(self) -> str:
        return self.tokenizer.decode(self.tokens)

    @property
    def generated_text(self) -> str:
        return self.tokenizer.decode(self._generated)

    @property
    def edit_labels(self) -> tuple[str, ...]:
        """The edits a step would run under now: the session's own, then those of enclosing `edit` blocks."""
        return tuple(e.label for e in self.edits + active_edits(self.model))

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    # --- stepping ------------------------------------------------------------------------------
    def step(self) -> StepRecord:
        """Choose the next token, feed it, and return its record."""
        if self.finished:
            raise GenerationError(f"the session already ended ({self.finish_reason}); call reset() to start again.")
        self._make_room()
        device = self._logits.device
        start = time.perf_counter()
        with eval_no_grad(self.model, self._module_list):
            logits = self._logits  # (1, V)
            token = choose(logits, self.request, self._generator)  # (1,)
            probs = torch.softmax(logits.float(), dim=-1)[0]  # (V,)
            top = probs.topk(min(self.top_k_candidates, probs.numel()))
            summary = torch.stack((probs[token[0]], entropy(logits)[0]))  # (2,)
            self._logits, attention = self._forward(token[:, None])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - start
        attention = attention.float().cpu() if attention is not None else None
        return self._record(int(token), top, summary.tolist(), attention, elapsed)

    def run(self, n: int) -> list[StepRecord]:
        """Up to `n` steps; stops early when the session finishes (EOS, a stop string or max_new_tokens)."""
        if not isinstance(n, int) or n <= 0:
            raise GenerationError(f"run(n) needs a positive int, got {n!r}.")
        records = []
        for _ in range(n):
            if self.finished:
                break
            records.append(self.step())
        return records

    def reset(self, prompt: str | Sequence[int] | torch.Tensor | None = None) -> None:
        """Back to just after the prefill (no recompute), or start over with a new `prompt`."""
        if prompt is not None or not isinstance(self.cache, KVCache):  # a model's own cache: refill the prompt
            self._start(self.prompt_ids if prompt is None else prompt)
            return
        self.cache.truncate(self.prompt_length)
        self._logits = self._prefill_logits
        self._generated, self._history, self.finish_reason = [], [], None
        self._generator = self.request.new_generator(self._logits.device)

    # --- internals -----------------------------------------------------------------------------
    def _start(self, prompt: str | Sequence[int] | torch.Tensor) -> None:
        ids = _prompt_ids(self.tokenizer, prompt)
        limit = self.lm.max_len
        if limit is not None and len(ids) >= limit:
            raise GenerationError(
                f"the prompt has {len(ids)} tokens but the model's max_seq_len is {limit}; "
                "shorten the prompt so at least one token can be generated."
            )
        self.prompt_ids, self.prompt_length = ids, len(ids)
        with eval_no_grad(self.model, self._module_list):
            self._logits, attention = self._fill(ids, len(ids) + self.reserve)
        # (L, H, T): the last prompt token's attention over the prompt (the full (T, T) maps would
        # cost L*H*T*T floats; trace the prompt with workbench.trace for those)
        self.prompt_attention = attention.float().cpu() if attention is not None else None
        self._prefill_logits = self._logits
        self._generated, self._history, self.finish_reason = [], [], None
        self._generator = self.request.new_generator(self.lm.device)

    def _fill(self, ids: list[int], capacity: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A new cache of `capacity` positions (within the model's limit) holding `ids`; the last logits."""
        limit = self.lm.max_len
        capacity = min(limit, capacity) if limit is not None else capacity
        self._cache = None  # free the old cache before allocating the new one
        self._cache = self.lm.new_cache(1, capacity, mode=self.cache_mode)
        self._step_fn = decode_stepper(self.lm, self._cache, self.fast)
        prompt = torch.tensor([ids], device=self.lm.device)
        return self._forward(prompt, validate=True)

    def _forward(self, ids: torch.Tensor, validate: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Feed ids (1, T); returns last logits (1, V) and, when capturing, the last query's attention (L, H, S)."""
        rows = _LastRows(ids.shape[1])
        watching = watch_attention(rows, intercept=not self._hook_sites, patterns=self._hook_sites) \
            if self.capture_attention else contextlib.nullcontext()
        edited = edit(self.model, *self.edits) if self.edits else contextlib.nullcontext()
        with edited, watching:
            if validate:  # the prompt: checked by the adapter
                logits = prefill(self.lm, self._cache, ids, None)[:, -1]  # (1, V)
            else:
                logits = self._step_fn(ids)[:, -1]  # (1, V)
        return logits, rows.stacked(self.cache.length)  # still on the device: copied after the step's one sync

    def _make_room(self) -> None:
        cache, limit = self.cache, self.lm.max_len
        if cache.length + 1 <= cache.max_len:
            return
        if limit is not None and cache.max_len >= limit:
            raise GenerationError(
                f"the session reached the model's max_seq_len={limit} ({self.prompt_length} prompt + "
                f"{len(self._generated)} generated tokens); call reset() or use a shorter prompt."
            )
        grown = 2 * cache.max_len if limit is None else min(limit, 2 * cache.max_len)
        if isinstance(cache, KVCache):
            cache.resize(grown)
        elif not cache.static:  # a growing cache of the model's own: only the bound moves
            cache.max_len = grown
        else:  # a model's own preallocated cache cannot grow: refill every token fed so far into a larger one
            with eval_no_grad(self.model, self._module_list):
                self._fill(self.tokens, grown)

    def _record(self, token: int, top, summary: list[float], attention, elapsed: float) -> StepRecord:
        self._generated.append(token)
        reason: str | None = None
        if token in self.request.eos_ids:
            reason = "eos"
        elif self._stop is not None and self._stop.hit(self._generated):
            reason = "stop_string"
        elif len(self._generated) == self.request.max_new_tokens:
            reason = "length"
        self.finish_reason = reason
        ids = top.indices.tolist()
        cache = self.cache
        record = StepRecord(
            step=len(self._history), token_id=token, token_text=self.tokenizer.decode([token]),
            position=self.prompt_length + len(self._generated) - 1, token_prob=summary[0],
            candidate_ids=tuple(ids), candidate_texts=tuple(self.tokenizer.decode([i]) for i in ids),
            candidate_probs=tuple(top.values.tolist()), entropy=summary[1], cache_length=cache.length,
            cache_bytes_used=tuple(cache.layer_bytes_used()),
            cache_bytes_allocated=tuple(cache.layer_bytes_allocated()),
            step_time=elapsed, attention=attention, finish_reason=reason, edits=self.edit_labels,
        )  # fmt: skip
        self._history.append(record)
        return record

    def __repr__(self) -> str:
        return (
            f"GenerationSession(prompt={self.prompt_length} tokens, generated={len(self._generated)}, "
            f"finished={self.finish_reason}, cache={self._cache!r})"
        )


def _prompt_ids(tokenizer: TokenizerLike, prompt: str | Sequence[int] | torch.Tensor) -> list[int]:
    if isinstance(prompt, str):
        ids = list(tokenizer.encode(prompt))
    elif isinstance(prompt, torch.Tensor):
        ids = prompt.reshape(-1).tolist()  # (T,) or (1, T)
    else:
        ids = [int(i) for i in prompt]
    if not ids:
        raise GenerationError("the prompt encodes to zero tokens; pass non-empty text or ids.")
    return ids


class _LastRows:
    """Listener of the observation layer: the newest query's attention (H, S) of each attention call in a
    forward, in call order (one call per layer)."""

    def __init__(self, query_length: int) -> None:
        self.rows: list[torch.Tensor] = []
        self.query_length = query_length

    def on_pattern(self, _module: str, probs: torch.Tensor) -> None:
        self.rows.append(probs[0, :, -1, :].detach())  # (H, S)

    def on_sdpa(self, call: SdpaCall) -> None:
        call = call.unpacked(self.query_length)
        T = call.shape[2]
        self.rows.append(call.probabilities([0], torch.tensor([T - 1]))[0, :, 0, :])  # (H, S)

    def on_softmax(self, _scores: torch.Tensor, probs: torch.Tensor) -> None:
        self.rows.append(probs[0, :, -1, :].detach())  # (H, S)

    def stacked(self, length: int) -> torch.Tensor | None:
        """(L, H, length) over the positions the cache holds: a preallocated cache's unwritten slots are
        cut off, and a sliding-window layer's shorter row lines up with the newest positions."""
        if not self.rows:
            return None
        H = max(r.shape[0] for r in self.rows)
        out = self.rows[0].new_zeros(len(self.rows), H, length)
        for i, r in enumerate(self.rows):
            S = r.shape[-1]
            if S >= length:
                out[i, : r.shape[0]] = r[:, :length]
            else:
                out[i, : r.shape[0], length - S :] = r
        return out
