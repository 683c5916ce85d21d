"""KV caches of any causal LM behind the interface of `workbench.model.KVCache`.

`ForeignCache` holds a transformers `Cache` (dynamic, static, sliding-window), a legacy tuple of (k, v)
per layer, or nothing at all (a model without a cache: every step recomputes the whole sequence). It
also keeps what those caches do not: the attention mask over every position so far, so positions
continue per row after left padding, and the number of positions fed. Byte counts are measured from
the cache's own tensors.
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from typing import Any

import torch

from ..model.cache import CacheBytes


def returned_cache(out: Any) -> Any:
    """The cache a forward returned: its `cache` field (transformers after the rename), else `past_key_values`;
    or, from a tuple, what follows the logits when it is a cache (transformers' `return_dict=False` output and
    hand-written `(logits, presents)`; never nanoGPT's `(logits, loss)`).

    Only declared fields are read, so the deprecated alias of a renamed output is never touched.
    """
    if is_dataclass(out) and not isinstance(out, type):
        names = {f.name for f in fields(out)}
        for name in ("cache", "past_key_values"):
            if name in names:
                return getattr(out, name)
    if isinstance(out, dict):
        for name in ("cache", "past_key_values"):
            if dict.__contains__(out, name):
                return dict.__getitem__(out, name)
    if isinstance(out, tuple) and len(out) >= 2 and _is_cache(out[1]):
        return out[1]
    return None


def _is_cache(value: Any) -> bool:
    """A transformers Cache, or a legacy cache: a non-empty tuple or list of per-layer (k, v, ...) tensors."""
    if callable(getattr(value, "get_seq_length", None)):
        return True
    return isinstance(value, (tuple, list)) and bool(value) and all(
        isinstance(layer, (tuple, list)) and len(layer) >= 2 and all(isinstance(t, torch.Tensor) for t in layer[:2])
        for layer in value)


def cache_bytes(state: Any, _depth: int = 0) -> int:
    """Bytes of the tensors a KV cache holds: a workbench KVCache, a transformers Cache or nested tuples."""
    used = getattr(state, "bytes_used", None)
    if isinstance(used, int):
        return used
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if _depth > 4 or state is None:
        return 0
    if isinstance(state, (tuple, list)):
        return sum(cache_bytes(s, _depth + 1) for s in state)
    layers = getattr(state, "layers", None)
    if isinstance(layers, (list, tuple)):
        return sum(cache_bytes(getattr(ly, "keys", None), _depth + 1) + cache_bytes(getattr(ly, "values", None),
                                                                                     _depth + 1) for ly in layers)
    total = 0
    for attr in ("key_cache", "value_cache"):
        total += cache_bytes(getattr(state, attr, None), _depth + 1)
    return total


def cache_tensors(state: Any, _depth: int = 0) -> list[torch.Tensor]:
    """Every tensor a cache object holds (for weak references that show whether it was freed)."""
    if isinstance(state, torch.Tensor):
        return [state]
    if _depth > 4 or state is None:
        return []
    if isinstance(state, (tuple, list)):
        return [t for s in state for t in cache_tensors(s, _depth + 1)]
    out: list[torch.Tensor] = []
    for attr in ("keys", "values", "key_cache", "value_cache", "layers"):
        out += cache_tensors(getattr(state, attr, None), _depth + 1)
    return out


def new_hf_cache(model: Any, batch_size: int, max_len: int, mode: str) -> Any:
    """A transformers cache for `model`: `StaticCache` preallocates `max_len` positions (sliding-window
    layers hold their window), `DynamicCache` grows; both build the layer kinds the config declares."""
    from transformers import DynamicCache, StaticCache

    if mode == "static":
        return StaticCache(config=model.config, max_cache_len=max_len)
    return DynamicCache(config=model.config)


def _layers(state: Any) -> list[tuple[torch.Tensor | None, torch.Tensor | None]]:
    """(keys, values) per layer of a transformers Cache or a legacy tuple; None before a layer is written."""
    if state is None:
        return []
    layers = getattr(state, "layers", None)
    if isinstance(layers, (list, tuple)):
        return [(getattr(ly, "keys", None), getattr(ly, "values", None)) for ly in layers]
    if isinstance(state, (tuple, list)):
        return [(kv[0], kv[1]) if isinstance(kv, (tuple, list)) and len(kv) >= 2 else (None, None) for kv in state]
    return []


def _nbytes(t: torch.Tensor | None) -> int:
    return t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0


class ForeignCache(CacheBytes):
    """A model's own cache (or none) with what decoding needs around it; the interface of `KVCache`.

    style: "hf" (a transformers Cache), "tuple" (whatever a module returns as `past_key_values`) or "none"
    (no cache: `ids` keeps every token fed, and each step recomputes them all).
    """

    def __init__(self, style: str, batch_size: int, max_len: int, state: Any, device: torch.device,
                 *, static: bool = False) -> None:
        self.style, self.state = style, state
        self.batch_size, self.max_len, self.static = batch_size, max_len, static
        self.mode = "static" if static else "growing"
        self.length = 0
        self.mask = torch.ones(batch_size, 0, dtype=torch.long, device=device)  # (B, L) 1 = token
        self.ids = torch.zeros(batch_size, 0, dtype=torch.long, device=device)  # (B, L), style "none" only
        self.padded = False  # True once a mask with padding was written

    # --- feeding (called by ModelAdapter.step) ----------------------------------------------------
    def check_room(self, new_tokens: int) -> None:
        if self.length + new_tokens > self.max_len:
            from ..errors import InputError

            raise InputError(f"the cache holds {self.length} of {self.max_len} positions and cannot take "
                             f"{new_tokens} more; create the cache with a larger max_len.")

    def extend(self, ids: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The mask over every position after feeding `ids` (B, T), and the positions it implies (B, L+T)."""
        T = ids.shape[1]
        self.check_room(T)
        if mask is None:
            full = torch.cat((self.mask, torch.ones_like(ids)), dim=1)
        else:
            mask = mask.to(self.mask.device, torch.long)
            full = mask if mask.shape[1] == self.length + T else torch.cat((self.mask, mask), dim=1)
            self.padded = self.padded or bool((mask == 0).any())
        positions = (full.cumsum(-1) - 1).clamp_min(0)  # (B, L+T): as transformers' generate counts them
        return full, positions

    def commit(self, ids: torch.Tensor, mask: torch.Tensor, state: Any) -> None:
        """Record a forward that went through: its mask, the cache it returned, the ids (no-cache style)."""
        self.mask, self.state = mask, state
        if self.style == "none":
            self.ids = torch.cat((self.ids, ids), dim=1)
        self.length += ids.shape[1]

    def make_dynamic(self, state: Any) -> None:
        """Swap an empty preallocated cache for a growing one (a model that cannot use the former)."""
        self.state, self.static, self.mode = state, False, "growing"

    # --- editing ---------------------------------------------------------------------------------
    def reorder(self, index: torch.Tensor) -> None:
        """Reorder (or repeat) the batch rows, as beam search needs: row i becomes row index[i]."""
        index = index.to(self.mask.device)
        reorder = getattr(self.state, "reorder_cache", None)
        if callable(reorder):
            reorder(index)
        elif self.state is not None:
            self.state = tuple(tuple(t.index_select(0, index) if isinstance(t, torch.Tensor) else t for t in layer)
                               for layer in self.state)
        self.mask, self.ids = self.mask.index_select(0, index), self.ids.index_select(0, index)
        self.batch_size = int(index.numel())

    # --- accounting ------------------------------------------------------------------------------
    def layer_bytes_allocated(self) -> list[int]:
        """Bytes of each layer's key and value tensors, measured from the tensors themselves."""
        return [_nbytes(k) + _nbytes(v) for k, v in _layers(self.state)]

    def layer_bytes_used(self) -> list[int]:
        """The allocated bytes that hold fed positions: all of a grown tensor; of a preallocated one, the
        share of its slots written so far (a sliding window holds at most its window)."""
        used = []
        for (k, _v), nbytes in zip(_layers(self.state), self.layer_bytes_allocated()):
            slots = k.shape[-2] if isinstance(k, torch.Tensor) and k.dim() >= 2 else 0
            held = min(self.length, slots) if self.static else slots
            used.append(nbytes * held // slots if slots else 0)
        return used

    def __repr__(self) -> str:
        kind = type(self.state).__name__ if self.state is not None else self.style
        return (f"ForeignCache({kind}, batch={self.batch_size}, length={self.length}/{self.max_len}, "
                f"used={self.bytes_used:,} B, allocated={self.bytes_allocated:,} B)")
