"""A fixed-shape one-token decode step over a static `KVCache` (`FastDecoder` in decoder.py runs it).

`TransformerLM.forward` with a cache slices the filled keys (`keys[:, :, :L+1]`), so its shapes
change every step and a Python int (the cache length) picks the slice. `decode_step` instead
keeps every shape fixed for a given (batch, max_len):
- the new key/value is written with `index_copy_` at a write position held in a DEVICE tensor;
- attention runs over all Smax preallocated keys, with a mask built on the device from the
  cache's key mask and that position (empty slots are masked out, so the result is the same);
- RoPE / learned positions are counted on the device from the same mask.
Nothing in it reads a tensor back to the host, so it can be captured in a CUDA graph
(`workbench.model.graphs`) or compiled with `torch.compile(..., fullgraph=True)`.

`CompiledStep` runs the step through `torch.compile`: the eager step of a 30-layer model is ~1,100
kernels, most of them small elementwise ones (norms, RoPE, SiLU, residual adds) that inductor fuses,
and a graph replays whatever the step launches.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from .cache import KVCache

if TYPE_CHECKING:
    from .transformer import TransformerLM

ROUTES = ("plain", "eager", "graph")  # what a FastDecoder call ran, in `FastDecoder.last_route`


class StaticSlots:
    """A static cache's buffers seen through a device write position: the `cache` argument of the blocks.

    The blocks call `update(layer, k, v)` exactly as they call `KVCache.update`; here the new
    (B, K, 1, D) entries land at `write_pos` and the whole (B, K, Smax, D) buffers come back.
    Holding the buffers also keeps them alive, so a replaced buffer never reuses their address.
    """

    def __init__(self, cache: KVCache) -> None:
        if cache.mode != "static":
            raise InputError(
                f"the fixed-shape decode step needs a static cache, got mode={cache.mode!r}; "
                "create it with model.new_cache(batch, max_len, mode='static')."
            )
        self.keys, self.values = list(cache.keys), list(cache.values)
        self.key_mask = cache.key_mask  # (B, Smax) bool, True = a real token (or not yet written)
        self.batch_size, self.max_len = cache.batch_size, cache.max_len
        self.key_pos = torch.arange(cache.max_len, device=cache.device)  # (Smax,)
        self.write_pos = torch.zeros(1, dtype=torch.long, device=cache.device)  # (1,) next free slot

    def matches(self, cache: KVCache) -> bool:
        """False once the cache reallocated (resize, reorder): these slots would write stale buffers."""
        return (
            cache.key_mask is self.key_mask
            and all(a is b for a, b in zip(cache.keys, self.keys))
            and all(a is b for a, b in zip(cache.values, self.values))
        )

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, K, 1, D) at `write_pos`; return all keys and values (B, K, Smax, D)."""
        self.keys[layer].index_copy_(2, self.write_pos, k)
        self.values[layer].index_copy_(2, self.write_pos, v)
        return self.keys[layer], self.values[layer]


def decode_step(model: TransformerLM, token: torch.Tensor, slots: StaticSlots) -> torch.Tensor:
    """Logits (B, 1, V) for one new token per row (B, 1), written at `slots.write_pos`.

    Only the inputs of `TransformerLM.trunk` are prepared here, in fixed shapes; the body is the one
    every path runs. The mask is (key valid and key <= new position) or key == new position, exactly
    `build_mask` for T=1, and positions count the valid keys before the new one, as
    `resolve_positions` does.
    """
    w = slots.write_pos  # (1,)
    slots.key_mask.index_fill_(1, w, True)  # the new token is a real key (plain path: write_mask)
    valid = slots.key_mask & (slots.key_pos <= w)  # (B, Smax)
    positions = valid.sum(-1, keepdim=True) - 1  # (B, 1)
    mask = valid[:, None, None, :]  # (B, 1, 1, Smax); the new key is valid, so no row is empty
    return model.trunk(token, positions, mask, slots)  # (B, 1, V)


class CompiledStep:
    """`decode_step` through `torch.compile` (fullgraph, static shapes), called like `decode_step`.

    mode: torch.compile's mode; "reduce-overhead" lets torch.compile capture CUDA graphs itself (on
    CUDA; elsewhere it only compiles), the alternative to `graphs.GraphedDecodeStep` around the step.
    Dynamo caches the compiled code on `decode_step` itself, so a new decoder for the same model and
    shapes (the next `generate` call) reuses it. On any compiler failure (no C++ compiler, no
    Triton, a Dynamo error) it warns once with the reason and runs the eager step from then on.
    """

    def __init__(self, mode: str | None = None) -> None:
        self.mode = mode
        self._fn: Callable | None = None
        self.error: BaseException | None = None  # why compilation was given up, if it was
        self.calls = 0  # calls that ran the compiled step

    def __call__(self, model: TransformerLM, token: torch.Tensor, slots: StaticSlots) -> torch.Tensor:
        if self.error is None:
            try:
                if self._fn is None:
                    self._fn = torch.compile(decode_step, fullgraph=True, dynamic=False, mode=self.mode)
                logits = self._fn(model, token, slots)
                self.calls += 1
                return logits
            except Exception as err:  # compiler failures surface at the first call; never crash a run
                self.error = err
                warnings.warn(
                    f"the compiled decode step is unavailable ({type(err).__name__}: {err}); "
                    "decoding continues with the eager step, which gives the same tokens.",
                    RuntimeWarning, stacklevel=2,
                )
        return decode_step(model, token, slots)  # rewrites the same slot: safe after a failed attempt


def hook_tables(model: nn.Module) -> list[dict]:
    """The forward (pre-)hook dicts of every submodule. Registering or removing a hook edits these
    dicts in place, so a list built once answers `hooks_attached` in microseconds per step."""
    return [table for m in model.modules() for table in (m._forward_hooks, m._forward_pre_hooks)]


def hooks_attached(model: nn.Module, tables: list[dict] | None = None) -> bool:
    """True when anything would observe a forward: module hooks (global or on any submodule, which a
    workbench trace registers) or patched attention functions (a trace intercepting SDPA/softmax).

    A captured CUDA graph or a compiled region would run without calling them, so callers fall
    back to the plain forward while this is True. `tables` may pass a cached `hook_tables(model)`.
    """
    mod = nn.modules.module
    if mod._global_forward_hooks or mod._global_forward_pre_hooks:
        return True
    if F.scaled_dot_product_attention is not torch._C._nn.scaled_dot_product_attention:
        return True
    return any(tables if tables is not None else hook_tables(model))
