"""What every decoding entry point does with a prompt before the first token: check the request against
the model (through `ModelAdapter`) and run the validated prefill."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import GenerationError, ModelContractError, WorkbenchError
from ..lm import ModelAdapter
from .sampling import CACHE_MODES


def check_request(
    lm: ModelAdapter, input_ids: Any, attention_mask: Any, max_new_tokens: Any, cache_mode: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Reject what the model's own checks cannot see; returns (B, T) ids and the mask (None if no padding)."""
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens <= 0:
        raise GenerationError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}; pass "
                              "max_new_tokens=N (or a GenerationRequest that sets it).")
    if cache_mode not in CACHE_MODES:
        raise GenerationError(f"cache_mode={cache_mode!r} is unknown; use one of {CACHE_MODES}.")
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() not in (1, 2) or input_ids.shape[-1] == 0:
        raise GenerationError("input_ids must be a non-empty tensor of token ids shaped (B, T) or (T,).")
    if attention_mask is not None and not isinstance(attention_mask, torch.Tensor):
        raise GenerationError("attention_mask must be a tensor shaped like input_ids, got "
                              f"{type(attention_mask).__name__}.")
    if input_ids.dim() == 1:
        input_ids = input_ids[None]  # (1, T)
        attention_mask = attention_mask[None] if attention_mask is not None else None
    if input_ids.device != lm.device:  # a tokenizer's CPU ids for a GPU model
        input_ids = input_ids.to(lm.device)
    if attention_mask is not None:
        if attention_mask.shape != input_ids.shape:
            raise GenerationError(f"attention_mask has shape {tuple(attention_mask.shape)} but input_ids "
                                  f"{tuple(input_ids.shape)}; pass one 0/1 entry per token.")
        attention_mask = attention_mask.to(lm.device)
        empty = (attention_mask == 0).all(dim=1)
        if bool(empty.any()):
            raise GenerationError(f"attention_mask row {int(empty.nonzero()[0])} masks every prompt token, so there "
                                  "is nothing to continue; drop that row or give it at least one token.")
    T, limit = input_ids.shape[1], lm.max_len
    if limit is not None and T + max_new_tokens > limit:
        raise GenerationError(
            f"prompt length {T} + max_new_tokens {max_new_tokens} = {T + max_new_tokens} exceeds the "
            f"model's max_seq_len={limit}; ask for at most {limit - T} new tokens."
        )
    if attention_mask is not None and bool(attention_mask.all()):
        attention_mask = None  # no padding: the plain causal path is faster and identical
    return input_ids, attention_mask


def check_pad(lm: ModelAdapter, pad: int) -> None:
    """The pad id is fed back into the model after a row ends, so it must be an id the embedding has."""
    rows = lm.embedding_rows
    if not isinstance(pad, int) or pad < 0 or (rows is not None and pad >= rows):
        raise GenerationError(f"pad_token_id={pad!r} is not a token id of this model (vocabulary of {rows}); it is "
                              "fed back after a row ends: pass pad_token_id= (or an eos_token_id) inside it.")


def prefill(lm: ModelAdapter, cache: Any, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The prompt's forward into `cache` (validated), as logits (B, T, V); a forward that is not a causal
    LM's (wrong arguments, no logits) is reported as such rather than as its own exception."""
    try:
        return lm.step(ids, cache, mask, validate=True)
    except WorkbenchError:
        raise
    except (TypeError, AttributeError, IndexError, RuntimeError, ValueError) as err:
        raise ModelContractError(
            f"{type(lm.model).__name__} could not be called as a causal LM on token ids {tuple(ids.shape)}: "
            f"{type(err).__name__}: {err}. Its forward must take input_ids (B, T) and return logits (B, T, V)."
        ) from err
