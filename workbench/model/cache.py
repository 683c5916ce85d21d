"""`KVCache`: per-layer key/value storage with exact byte accounting.

A static cache preallocates `max_len` positions per layer, so memory is fixed and known up front;
a growing cache concatenates, so it holds only what was used. Both keep a key-validity mask per
sequence, so batches with left padding decode correctly and positions continue per sequence.
"""

from __future__ import annotations

import torch

from ..errors import InputError
from .config import ModelConfig

MODES = ("static", "growing")
_INDEX_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


class CacheBytes:
    """Totals over a cache's per-layer byte counts (`layer_bytes_allocated`, `layer_bytes_used`)."""

    def layer_bytes_allocated(self) -> list[int]:
        raise NotImplementedError

    def layer_bytes_used(self) -> list[int]:
        raise NotImplementedError

    @property
    def bytes_allocated(self) -> int:
        return sum(self.layer_bytes_allocated())

    @property
    def bytes_used(self) -> int:
        return sum(self.layer_bytes_used())


class KVCache(CacheBytes):
    """Keys and values for every layer: each (B, K, S, D). `length` counts filled positions."""

    def __init__(
        self,
        config: ModelConfig,
        batch_size: int,
        max_len: int | None = None,
        *,
        mode: str = "static",
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if mode not in MODES:
            raise InputError(f"cache mode={mode!r} is unknown; use one of {MODES}.")
        max_len = config.max_seq_len if max_len is None else max_len
        if batch_size <= 0 or max_len <= 0:
            raise InputError(f"batch_size and max_len must be positive, got {batch_size} and {max_len}.")
        if max_len > config.max_seq_len:
            raise InputError(
                f"cache max_len={max_len} exceeds the model's max_seq_len={config.max_seq_len}; ask for fewer tokens."
            )
        self.config, self.mode, self.max_len = config, mode, max_len
        self.batch_size, self.dtype = batch_size, dtype
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.length = 0
        shape = (batch_size, config.kv_heads, max_len if mode == "static" else 0, config.head_dim)
        self.keys = [torch.zeros(shape, device=self.device, dtype=dtype) for _ in range(config.n_layers)]
        self.values = [torch.zeros(shape, device=self.device, dtype=dtype) for _ in range(config.n_layers)]
        self.key_mask = torch.ones(batch_size, max_len, dtype=torch.bool, device=self.device)  # (B, Smax)
        self.masked = False  # True once any padding mask was written

    # --- writing -------------------------------------------------------------------------------
    def check_room(self, new_tokens: int) -> None:
        if self.length + new_tokens > self.max_len:
            raise InputError(
                f"the cache holds {self.length} of {self.max_len} positions and cannot take "
                f"{new_tokens} more; create the cache with a larger max_len."
            )

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, K, T, D) after the filled positions; return all keys/values (B, K, L+T, D)."""
        t = k.shape[2]
        end = self.length + t
        if self.mode == "static":
            self.keys[layer][:, :, self.length : end] = k
            self.values[layer][:, :, self.length : end] = v
            return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]
        self.keys[layer] = torch.cat((self.keys[layer][:, :, : self.length], k), dim=2)
        self.values[layer] = torch.cat((self.values[layer][:, :, : self.length], v), dim=2)
        return self.keys[layer], self.values[layer]

    def write_mask(self, mask: torch.Tensor | None, new_tokens: int) -> torch.Tensor | None:
        """Record the key mask for the new tokens; return the mask over all keys (B, L+T) or None.

        `mask` may cover only the new tokens (B, T) or every position (B, L+T).
        """
        end = self.length + new_tokens
        if mask is not None:
            if mask.shape[1] == end:
                self.key_mask[:, :end] = mask
            else:
                self.key_mask[:, self.length : end] = mask
            self.masked = True
        else:
            self.key_mask[:, self.length : end] = True
        return self.key_mask[:, :end] if self.masked else None

    def advance(self, new_tokens: int) -> None:
        """Mark `new_tokens` more positions as filled; called once per forward, after every layer."""
        self.length += new_tokens

    # --- editing -------------------------------------------------------------------------------
    def reorder(self, index: torch.Tensor) -> None:
        """Reorder (or repeat) the batch rows, as beam search needs: row i becomes row index[i].

        index: 1-D integer tensor (or list) of rows in [0, batch_size); refused otherwise."""
        if not isinstance(index, torch.Tensor):
            try:
                index = torch.as_tensor(index)
            except (TypeError, ValueError, RuntimeError) as err:
                raise InputError(f"cache.reorder needs a 1-D tensor of row numbers, got {type(index).__name__}.") \
                    from err
        if index.dim() != 1 or index.numel() == 0 or index.dtype not in _INDEX_DTYPES:
            raise InputError(
                f"cache.reorder needs a non-empty 1-D integer tensor of row numbers, got shape "
                f"{tuple(index.shape)} and dtype {index.dtype}."
            )
        if bool(((index < 0) | (index >= self.batch_size)).any()):
            raise InputError(
                f"cache.reorder rows must lie in [0, {self.batch_size}) (the cache's batch size), got "
                f"min {int(index.min())} and max {int(index.max())}."
            )
        index = index.to(self.device)
        self.keys = [k.index_select(0, index) for k in self.keys]
        self.values = [v.index_select(0, index) for v in self.values]
        self.key_mask = self.key_mask.index_select(0, index)
        self.batch_size = int(index.numel())

    def truncate(self, length: int) -> None:
        """Forget every position from `length` on, keeping the allocation (rewinds a session)."""
        if not 0 <= length <= self.length:
            raise InputError(f"cannot truncate a cache of length {self.length} to {length}.")
        self.length = length
        self.key_mask[:, length:] = True
        if self.mode == "growing":
            self.keys = [k[:, :, :length] for k in self.keys]
            self.values = [v[:, :, :length] for v in self.values]

    def resize(self, max_len: int) -> None:
        """Raise the capacity to `max_len` positions, copying what is filled (a static cache reallocates)."""
        if not self.length <= max_len <= self.config.max_seq_len:
            raise InputError(
                f"cannot resize the cache to max_len={max_len}: it must lie between the filled length "
                f"{self.length} and the model's max_seq_len={self.config.max_seq_len}."
            )
        if self.mode == "static":
            shape = (self.batch_size, self.config.kv_heads, max_len, self.config.head_dim)  # (B, K, S, D)
            self.keys = [_copy_into(k.new_zeros(shape), k, self.length) for k in self.keys]
            self.values = [_copy_into(v.new_zeros(shape), v, self.length) for v in self.values]
        mask = torch.ones(self.batch_size, max_len, dtype=torch.bool, device=self.device)  # (B, Smax)
        mask[:, : self.length] = self.key_mask[:, : self.length]
        self.key_mask, self.max_len = mask, max_len

    def reset(self) -> None:
        """Forget every position, keeping the allocation."""
        self.length = 0
        self.masked = False
        self.key_mask.fill_(True)
        if self.mode == "growing":
            self.keys = [k[:, :, :0] for k in self.keys]
            self.values = [v[:, :, :0] for v in self.values]

    # --- accounting ----------------------------------------------------------------------------
    @property
    def bytes_per_token(self) -> int:
        """Bytes one position costs across all layers, keys and values, per sequence."""
        c = self.config
        return 2 * c.n_layers * c.kv_heads * c.head_dim * self.keys[0].element_size()

    def layer_bytes_allocated(self) -> list[int]:
        return [k.nbytes + v.nbytes for k, v in zip(self.keys, self.values)]

    def layer_bytes_used(self) -> list[int]:
        per_layer = self.bytes_per_token // self.config.n_layers
        return [per_layer * self.length * self.batch_size] * self.config.n_layers

    def __repr__(self) -> str:
        return (
            f"KVCache(mode={self.mode}, batch={self.batch_size}, length={self.length}/{self.max_len}, "
            f"used={self.bytes_used:,} B, allocated={self.bytes_allocated:,} B)"
        )


def _copy_into(dst: torch.Tensor, src: torch.Tensor, length: int) -> torch.Tensor:
    dst[:, :, :length] = src[:, :, :length]
    return dst
