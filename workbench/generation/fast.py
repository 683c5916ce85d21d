"""The `fast=` option of `generate` and `GenerationSession`: which decode step feeds each new token.

fast=None (auto) turns the fixed-shape decode step (`workbench.model.fast`, run by
`workbench.model.decoder`) on only where it pays and is safe: a workbench `TransformerLM` on CUDA, a
static cache, no beam search, and for `generate` at least MIN_GRAPH_TOKENS new tokens (each call
captures its own graph). There it replays a CUDA graph per step. fast=True forces the step (eagerly
off CUDA, which is what the CPU tests run); fast="compile" does the same with the `torch.compile`d
step (fused kernels, captured in the graph on CUDA; compiling takes a while once per model and
shape); fast=False always uses the plain forward. Either way, while a hook or a trace listens a step
runs the plain forward, so nothing a user attached is skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import GenerationError
from ..lm import ModelAdapter
from ..model.decoder import FastDecoder, supports_fast_decode
from ..model.placement import module_device

Step = Callable[[torch.Tensor], torch.Tensor]  # ids (B, 1) -> logits (B, 1, V); the cache grows by one


MIN_GRAPH_TOKENS = 16  # auto mode: a graph costs ~4 eager steps to capture (warm-up + capture) per generate call


def auto_fast(device_type: str, cache_mode: str, num_beams: int = 1, new_tokens: int | None = None) -> bool:
    """What fast=None means: CUDA, a static cache, no beams, and (for `generate`, which captures a new
    graph per call) enough new tokens to repay the capture; a session captures once, so None there."""
    worth_it = new_tokens is None or new_tokens >= MIN_GRAPH_TOKENS
    return device_type == "cuda" and cache_mode == "static" and num_beams == 1 and worth_it


def resolve_fast(model: nn.Module, fast: bool | str | None, cache_mode: str, num_beams: int = 1,
                 new_tokens: int | None = None) -> bool | str:
    """Whether to decode with the fixed-shape step (True, or "compile" for the compiled one); an
    explicit request that cannot be honoured raises."""
    if fast is not None and not isinstance(fast, bool) and fast != "compile":
        raise GenerationError(f"fast must be True, False, 'compile' or None (auto), got {fast!r}.")
    if fast is None:
        device = module_device(model) if supports_fast_decode(model) else torch.device("cpu")
        return auto_fast(device.type, cache_mode, num_beams, new_tokens)
    if not fast:
        return False
    if not supports_fast_decode(model):
        raise GenerationError(
            f"fast={fast!r} needs a workbench TransformerLM, got {type(model).__name__}; pass fast=False or None."
        )
    if cache_mode != "static":
        raise GenerationError(
            f"fast={fast!r} decodes into a preallocated cache; got cache_mode={cache_mode!r}, use cache_mode='static'."
        )
    if num_beams > 1:
        raise GenerationError(
            f"fast={fast!r} does not support beam search (it reorders the cache every step); pass fast=None or False."
        )
    return fast


def decode_stepper(lm: ModelAdapter, cache: Any, fast: bool | str) -> Step:
    """The function that feeds one token per row into `cache`: the fast decoder or the adapter's step."""
    if fast:
        return FastDecoder(lm.model, cache, compiled=fast == "compile")
    return lambda ids: lm.step(ids, cache)
