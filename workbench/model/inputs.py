"""Input checks and position ids for `TransformerLM.forward`.

Every malformed input becomes an `InputError` that says what is wrong and how to fix it, instead of
an index error deep in an embedding (or a device-side assert on CUDA).
"""

from __future__ import annotations

import torch

from ..errors import InputError
from .cache import KVCache
from .config import ModelConfig
from .placement import same_device

_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def check_inputs(
    config: ModelConfig,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    cache: KVCache | None,
    device: torch.device | None = None,
) -> torch.Tensor | None:
    """Validate the forward inputs; returns the attention mask as bool (or None). `device` is the
    model's (its embedding's) device: inputs elsewhere are refused before any kernel runs."""
    if not isinstance(input_ids, torch.Tensor):
        raise InputError(f"input_ids must be a torch.Tensor, got {type(input_ids).__name__}.")
    for name, value in (("attention_mask", attention_mask), ("position_ids", position_ids)):
        if value is not None and not isinstance(value, torch.Tensor):
            raise InputError(
                f"{name} must be a torch.Tensor or None, got {type(value).__name__}; "
                f"pass torch.tensor({name}) with the same shape as input_ids."
            )
    if cache is not None:
        check_cache(config, cache, device)
    if device is not None:
        for name, t in (("input_ids", input_ids), ("attention_mask", attention_mask)):  # position_ids are moved
            if isinstance(t, torch.Tensor) and t.device != device:
                raise InputError(
                    f"{name} is on {t.device} but the model is on {device}; move the inputs with "
                    f"`{name}.to({str(device)!r})` (or the model with `model.to({str(t.device)!r})`)."
                )
    if input_ids.dtype not in _INT_DTYPES:
        raise InputError(
            f"input_ids must hold integer token ids, got dtype {input_ids.dtype}; "
            "pass token ids (torch.long), not embeddings or floats."
        )
    if input_ids.dim() != 2:
        raise InputError(
            f"input_ids must be 2-D (batch, time), got shape {tuple(input_ids.shape)}; "
            "add a batch dimension with input_ids[None]."
        )
    B, T = input_ids.shape
    if T == 0 or B == 0:
        raise InputError(f"input_ids is empty (shape {tuple(input_ids.shape)}); pass at least one token.")
    past = cache.length if cache is not None else 0
    if past + T > config.max_seq_len:
        raise InputError(
            f"sequence length {past + T} (cached {past} + new {T}) exceeds max_seq_len="
            f"{config.max_seq_len}; truncate the input or use a model with a longer context."
        )
    bad = (input_ids < 0) | (input_ids >= config.vocab_size)
    if bool(bad.any()):
        lo, hi = int(input_ids.min()), int(input_ids.max())
        raise InputError(
            f"input_ids contain ids outside [0, {config.vocab_size}) (min {lo}, max {hi}); "
            "check the tokenizer matches this model's vocab_size."
        )
    if cache is not None and cache.batch_size != B:
        raise InputError(f"cache batch size {cache.batch_size} does not match input batch size {B}.")
    if position_ids is not None:
        check_positions(config, position_ids, B, T)
    if attention_mask is None:
        return None
    if attention_mask.dim() != 2 or attention_mask.shape[0] != B or attention_mask.shape[1] not in (T, past + T):
        allowed = f"({B}, {T})" + (f" or ({B}, {past + T})" if past else "")
        raise InputError(
            f"attention_mask shape {tuple(attention_mask.shape)} does not match input_ids {(B, T)}; "
            f"expected {allowed} with 1 for tokens and 0 for padding."
        )
    if attention_mask.dtype != torch.bool:
        ok = bool(((attention_mask == 0) | (attention_mask == 1)).all())
        if not ok:
            raise InputError(
                "attention_mask must contain only 0 and 1 (1 = token, 0 = padding); additive masks "
                "with -inf are not accepted."
            )
        attention_mask = attention_mask.bool()
    if cache is None and not bool(attention_mask.any(dim=1).all()):
        raise InputError("a row of attention_mask is all zeros: every sequence needs at least one token.")
    return attention_mask


def check_positions(config: ModelConfig, position_ids: torch.Tensor, B: int, T: int) -> None:
    """Given position ids must be integers of shape (B, T) or (1, T), >= 0, and inside a learned table."""
    if tuple(position_ids.shape) not in ((B, T), (1, T)):
        raise InputError(f"position_ids shape {tuple(position_ids.shape)} does not match input_ids {(B, T)}.")
    if position_ids.dtype not in _INT_DTYPES:
        raise InputError(
            f"position_ids must hold integer positions, got dtype {position_ids.dtype}; pass "
            "torch.arange(T) (torch.long). Fractional or NaN positions are refused, not rounded."
        )
    lo, hi = int(position_ids.min()), int(position_ids.max())
    if lo < 0:
        raise InputError(f"position_ids contain negative positions (min {lo}); positions count from 0.")
    if config.positions == "learned" and hi >= config.max_seq_len:
        raise InputError(
            f"position_ids reach {hi}, but this model learned positions [0, {config.max_seq_len}) only; "
            "keep positions below max_seq_len."
        )


def check_cache(config: ModelConfig, cache: object, device: torch.device | None = None) -> None:
    """A cache must be a `KVCache` built for a model of this shape (layers, KV heads, head size), on its device."""
    if not isinstance(cache, KVCache):
        raise InputError(
            f"cache must be a workbench KVCache, got {type(cache).__name__}; create one with model.new_cache(B)."
        )
    mine = (config.n_layers, config.kv_heads, config.head_dim)
    theirs = (cache.config.n_layers, cache.config.kv_heads, cache.config.head_dim)
    if mine != theirs:
        raise InputError(
            f"the cache was built for another model (layers, KV heads, head size) = {theirs}, but this model "
            f"has {mine}; create the cache with this model's new_cache(B)."
        )
    if device is not None and not same_device(cache.device, device):
        raise InputError(
            f"the cache is on {cache.device} but the model is on {device}; create the cache with model.new_cache(B)."
        )


def resolve_positions(
    position_ids: torch.Tensor | None,
    full_mask: torch.Tensor | None,
    past: int,
    input_ids: torch.Tensor,
) -> torch.Tensor:
    """Position ids (B, T): given ones, else counted over valid keys so they continue past a cache."""
    B, T = input_ids.shape
    if position_ids is not None:
        return position_ids.to(input_ids.device).long().expand(B, T)
    if full_mask is None:
        return torch.arange(past, past + T, device=input_ids.device).expand(B, T)
    counted = full_mask.long().cumsum(-1) - 1  # (B, S): index among the valid tokens
    return counted[:, -T:].clamp(min=0)
