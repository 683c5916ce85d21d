"""`GenerationRequest`: the decoding settings of `generate`, `beam_search` and `GenerationSession` as one
frozen object, validated once, as transformers' `GenerationConfig` is.

A request says what to decode: how many tokens, how each one is chosen, where a row ends and what fills
it afterwards. How the decoding runs (the tokenizer, an explicit generator, cache_mode, fast) stays with
the call. Every entry point takes `request` and, for the quick call, keywords named after its fields,
applied on top as `dataclasses.replace` would: `generate(model, ids, max_new_tokens=20, do_sample=True)`
is `generate(model, ids, GenerationRequest(max_new_tokens=20, do_sample=True))`, and a keyword that is
no field raises a GenerationError naming the valid ones.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import torch

from ..errors import GenerationError

TOKENIZER_EOS: Final = "tokenizer"  # eos_token_id's default: the EOS id of the tokenizer the call is given


@dataclass(frozen=True)
class GenerationRequest:
    """How many tokens to decode and how each one is chosen. Every bad value is a GenerationError."""

    max_new_tokens: int | None = None  # new tokens per row; generate needs it, a session without it runs on
    do_sample: bool = False  # False: greedy (or beam search); True: draw from the processed distribution
    temperature: float = 1.0  # divides the logits before sampling; < 1 sharpens, > 1 flattens
    top_k: int | None = None  # keep only the k most likely tokens when sampling (None or 0 = keep all)
    top_p: float = 1.0  # nucleus: keep the smallest set whose probability reaches top_p
    num_beams: int = 1  # beam width; 1 = no beam search
    length_penalty: float = 1.0  # alpha: finished beams are ranked by sum(log p) / n_new ** alpha
    num_return_sequences: int = 1  # sequences returned per prompt (beams, or independent samples)
    eos_token_id: int | Sequence[int] | Literal["tokenizer"] | None = TOKENIZER_EOS  # a row ends at any; None: never
    pad_token_id: int | None = None  # fills a row after it ends and is fed back; None: the first EOS id, else 0
    stop_strings: str | Sequence[str] = ()  # a row ends once its new text contains one (needs a tokenizer)
    seed: int | None = None  # seeds a private torch.Generator, so sampling is reproducible

    def __post_init__(self) -> None:
        self._check_counts()
        self._check_sampling()
        self._check_beams()
        self._check_ends()

    def _check_counts(self) -> None:
        n = self.max_new_tokens
        if n is not None and not (_is_int(n) and n > 0):
            raise GenerationError(f"max_new_tokens must be a positive int, got {n!r}; ask for at least 1 new token "
                                  "(a GenerationSession also takes None: no limit).")
        for name in ("num_beams", "num_return_sequences"):
            value = getattr(self, name)
            if not (_is_int(value) and value >= 1):
                raise GenerationError(f"{name} must be a positive int, got {value!r}; 1 is the default.")
        seed = self.seed
        if seed is not None and not (_is_int(seed) and -(2**63) <= seed < 2**64):
            raise GenerationError(f"seed must be an int in [-2**63, 2**64) or None, got {seed!r}; None draws "
                                  "from torch's global generator.")

    def _check_sampling(self) -> None:
        if not isinstance(self.do_sample, bool):
            raise GenerationError(f"do_sample must be True or False, got {self.do_sample!r}; True samples, False "
                                  "decodes greedily (or by beam search).")
        t = self.temperature
        if not _is_real(t):
            raise GenerationError(f"temperature must be a finite number, got {t!r}; 1.0 leaves the logits as they are.")
        if self.do_sample and not t > 0:
            raise GenerationError(f"temperature must be > 0 when sampling, got {t!r}; use do_sample=False for "
                                  "greedy decoding (the limit of temperature -> 0).")
        k = self.top_k
        if k is not None and not (_is_int(k) and k >= 0):
            raise GenerationError(f"top_k must be a non-negative int or None, got {k!r}; None (or 0) keeps every "
                                  "token, k keeps the k most likely.")
        p = self.top_p
        if not (_is_real(p) and 0 < p <= 1):
            raise GenerationError(f"top_p must lie in (0, 1], got {p!r}; 1.0 turns nucleus sampling off.")

    def _check_beams(self) -> None:
        if self.num_beams > 1 and self.do_sample:
            raise GenerationError(
                f"beam sampling (num_beams={self.num_beams} with do_sample=True) is not supported; "
                "use num_beams=1 to sample or do_sample=False for beam search."
            )
        if not self.do_sample and self.num_return_sequences > self.num_beams:
            raise GenerationError(
                f"num_return_sequences={self.num_return_sequences} exceeds num_beams={self.num_beams}; "
                f"use num_beams >= {self.num_return_sequences} (or do_sample=True for several samples)."
            )
        if not _is_real(self.length_penalty):
            raise GenerationError(f"length_penalty must be a finite number, got {self.length_penalty!r}; 1.0 ranks "
                                  "beams by mean log-probability, 0.0 by the sum.")

    def _check_ends(self) -> None:
        eos = self.eos_token_id
        if not _is_tokenizer_eos(eos) and not _is_ids(eos):
            raise GenerationError(f"eos_token_id must be a token id (an int >= 0), a list of them, None (no EOS) or "
                                  f"{TOKENIZER_EOS!r} (the tokenizer's), got {eos!r}.")
        pad = self.pad_token_id
        if pad is not None and not _is_id(pad):
            raise GenerationError(f"pad_token_id must be a token id (an int >= 0) or None (the first EOS id, else "
                                  f"0), got {pad!r}.")
        stops = self.stop_strings
        if not (isinstance(stops, str) and stops) and not (
            isinstance(stops, (list, tuple)) and all(isinstance(s, str) and s for s in stops)
        ):
            raise GenerationError(f"stop_strings must be a non-empty string or a list of them, got {stops!r}; "
                                  "() stops at EOS and max_new_tokens only.")

    # --- derived values ------------------------------------------------------------------------
    @property
    def eos_ids(self) -> tuple[int, ...]:
        """The EOS ids as a tuple; "tokenizer" counts as none until `for_tokenizer` resolves it."""
        eos = self.eos_token_id
        if eos is None or isinstance(eos, str):
            return ()
        return (eos,) if isinstance(eos, int) else tuple(eos)

    @property
    def stops(self) -> tuple[str, ...]:
        """The stop strings as a tuple."""
        return (self.stop_strings,) if isinstance(self.stop_strings, str) else tuple(self.stop_strings)

    @property
    def pad_id(self) -> int:
        """The id written after a row ends (and fed back): pad_token_id, else the first EOS id, else 0."""
        if self.pad_token_id is not None:
            return self.pad_token_id
        return self.eos_ids[0] if self.eos_ids else 0

    @property
    def new_tokens(self) -> int:
        """max_new_tokens, for what needs a bound (generate, beam search)."""
        if self.max_new_tokens is None:
            raise GenerationError("max_new_tokens is None, but decoding a batch needs a bound; pass "
                                  "max_new_tokens=N (or a GenerationRequest that sets it).")
        return self.max_new_tokens

    @property
    def processes_logits(self) -> bool:
        """True when temperature/top-k/top-p change the distribution that is sampled."""
        return self.temperature != 1.0 or bool(self.top_k) or self.top_p < 1.0

    # --- copies ----------------------------------------------------------------------------------
    def replace(self, **changes: Any) -> GenerationRequest:
        """A copy with some fields changed, validated again; a name that is no field raises GenerationError."""
        unknown = sorted(set(changes) - set(FIELDS))
        if unknown:
            raise GenerationError(f"unknown decoding setting(s) {unknown}; the fields of GenerationRequest are "
                                  f"{list(FIELDS)}. Fix the spelling, or pass it as the call's own keyword.")
        return dataclasses.replace(self, **changes) if changes else self

    def for_tokenizer(self, tokenizer: object | None) -> GenerationRequest:
        """This request with eos_token_id="tokenizer" replaced by the tokenizer's id (None when it has none)."""
        if not _is_tokenizer_eos(self.eos_token_id):
            return self
        eos = getattr(tokenizer, "eos_token_id", None)
        try:
            return self.replace(eos_token_id=eos)
        except GenerationError as err:
            raise GenerationError(f"the tokenizer's eos_token_id is not usable ({err}) Pass eos_token_id=... "
                                  "(or None) explicitly.") from None

    def new_generator(self, device: torch.device) -> torch.Generator | None:
        """A generator on `device` seeded with `seed` (None: torch's global RNG is used)."""
        if self.seed is None:
            return None
        return torch.Generator(device=device).manual_seed(self.seed)


FIELDS = tuple(f.name for f in dataclasses.fields(GenerationRequest))


def build_request(request: GenerationRequest | None, settings: Mapping[str, Any]) -> GenerationRequest:
    """`request` (default: all defaults) with `settings`, the call's keywords named after its fields, applied."""
    if request is None:
        request = GenerationRequest()
    elif not isinstance(request, GenerationRequest):
        raise GenerationError(f"request must be a GenerationRequest or None, got {type(request).__name__}; build "
                              "one with GenerationRequest(max_new_tokens=..., ...) or pass the settings as keywords.")
    return request.replace(**settings)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_ids(value: object) -> bool:
    """None, a token id, or a list/tuple of them (EOS ids)."""
    return value is None or _is_id(value) or (isinstance(value, (list, tuple)) and all(map(_is_id, value)))


def _is_tokenizer_eos(value: object) -> bool:
    return isinstance(value, str) and value == TOKENIZER_EOS
