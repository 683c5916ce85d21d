"""A prompt's KV cache, forked: its first L positions repeated to n rows, the shared start of a batch of
continuations that differ only from position L on.

In a causal model, a change at position p leaves every position before p, in every layer, as it was: a batch
of n runs of one prompt, each changed at or after position L, can run positions L..T-1 only, attending to the
keys and values of positions 0..L-1 that one plain run of the prompt computed. `PromptCache(adapter, ids)` runs
the prompt (1, T) once through the model's own cache (a workbench `KVCache`, a transformers `Cache`: full,
sliding-window, grouped-query alike), and `fork(L, n)` returns a fresh cache of that kind holding positions
[0, L) of every layer in n rows, for `adapter.cached(ids[:, L:], fork)`. The prompt's cache is never changed.

A batch whose layer j runs only its first n_j rows (`workbench.interventions.wave`: the rows a patch has not
reached yet are the prompt's own run) takes `fork(L, n, layer_rows=[n_0, n_1, ...])`: layer j's cache holds
n_j rows, which is what that layer's attention appends its n_j new rows to. `per_layer` says whether the cache
can be cut that way (a workbench `KVCache`; a transformers `Cache` whose `layers` are the model's blocks).

A model whose cache cannot be cut and repeated this way (one without a cache, a hand-written model's own
tuples, a transformers layer that cannot crop) raises `NoPrefixCache`: the caller runs every position.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch

from .adapter import ModelAdapter
from .caches import new_hf_cache

__all__ = ["NoPrefixCache", "PromptCache"]


class NoPrefixCache(RuntimeError):
    """The model gives no cache that a prefix can be forked from (why, in the message)."""


class PromptCache:
    """The cache of one prompt (1, T) through `adapter`'s model, and its logits (1, T, V) from that run."""

    def __init__(self, adapter: ModelAdapter, ids: torch.Tensor, blocks: int | None = None) -> None:
        """blocks: the model's block count, which a per-layer fork must match (None: no per-layer forks)."""
        if ids.ndim != 2 or ids.shape[0] != 1:
            raise NoPrefixCache(f"a prompt cache holds one sequence (1, T), got {tuple(ids.shape)}")
        self.adapter, self.length = adapter, int(ids.shape[1])
        if adapter.cache_style == "workbench":
            from ..model.transformer import TransformerLM

            model = adapter.model
            assert isinstance(model, TransformerLM)  # what cache_style "workbench" means
            state: Any = model.new_cache(1, self.length, mode="growing")
        elif adapter.cache_style is not None:
            state = new_hf_cache(adapter.model, 1, self.length, "growing") if adapter.kind == "hf" else None
            record = getattr(state, "activate_past_recording", None)
            if callable(record):  # sliding-window layers keep every position until cropped, so a fork can crop
                record()
        else:
            raise NoPrefixCache(f"{type(adapter.model).__name__} takes no KV cache")
        with torch.no_grad():
            self.logits, self.state = adapter.cached(ids, state)  # (1, T, V)
        if adapter.cache_style != "workbench" and not all(
                callable(getattr(self.state, m, None)) for m in ("crop", "batch_repeat_interleave")):
            raise NoPrefixCache(f"{type(adapter.model).__name__}'s cache, a {type(self.state).__name__}, is neither "
                                "a workbench KVCache nor a transformers Cache")
        if _filled(self.state) != self.length:
            raise NoPrefixCache(f"the model's cache holds {_filled(self.state)} positions after a prompt of "
                                f"{self.length}")
        self.per_layer = blocks is not None and _layer_count(self.state) == blocks

    def fork(self, length: int, rows: int, layer_rows: Sequence[int] | None = None) -> Any:
        """A new cache of the model's kind: positions [0, length) of every layer, in `rows` identical rows, or
        in layer_rows[j] rows at layer j (each at most `rows`; needs `per_layer`)."""
        if not 0 < length <= self.length or rows < 1:
            raise NoPrefixCache(f"cannot fork {rows} rows of {length} positions from a prompt of {self.length}")
        if layer_rows is not None and not (self.per_layer and len(layer_rows) == _layer_count(self.state)
                                           and all(0 <= r <= rows for r in layer_rows)):
            raise NoPrefixCache(f"cannot fork {list(layer_rows)} rows per layer from a {type(self.state).__name__}")
        state = self.state
        if self.adapter.cache_style == "workbench":
            new = copy.copy(state)  # `reorder` rebinds keys, values and the mask: the prompt's stay as they are
            new.reorder(torch.zeros(rows, dtype=torch.long))
            new.truncate(length)
            if layer_rows is not None:
                new.keys = [k[:r] for k, r in zip(new.keys, layer_rows, strict=True)]
                new.values = [v[:r] for v, r in zip(new.values, layer_rows, strict=True)]
        else:
            new = copy.deepcopy(state)
            try:
                if length < self.length:
                    new.crop(length - self.length)  # a negative count: the positions to remove from the end
                if layer_rows is None:
                    new.batch_repeat_interleave(rows)
                else:
                    for layer, r in zip(new.layers, layer_rows, strict=True):
                        layer.batch_repeat_interleave(max(r, 1))  # a layer of 0 rows is never run: left as is
            except (AttributeError, RuntimeError, ValueError, NotImplementedError) as err:
                raise NoPrefixCache(f"{type(state).__name__} cannot be cut and repeated: {err}") from err
        if _filled(new) != length:
            raise NoPrefixCache(f"a fork of {length} positions holds {_filled(new)}")
        return new


def _layer_count(state: Any) -> int:
    """The layers of a workbench `KVCache` or of a transformers `Cache` (its `layers`), -1 when unknown."""
    keys = getattr(state, "keys", None)
    if isinstance(keys, list):
        return len(keys)
    layers = getattr(state, "layers", None)
    if isinstance(layers, list) and all(callable(getattr(layer, "batch_repeat_interleave", None))
                                        for layer in layers):
        return len(layers)
    return -1


def _filled(state: Any) -> int:
    """Positions a workbench `KVCache` or a transformers `Cache` holds."""
    length = getattr(state, "length", None)
    if isinstance(length, int):
        return length
    seq = getattr(state, "get_seq_length", None)
    return int(seq()) if callable(seq) else -1
