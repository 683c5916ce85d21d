"""GGUF metadata that llama.cpp writes alike for every decoder, under the `{arch}.` key prefix.

`GGUFMeta` is what a family reads from a file's header; `workbench.io.gguf` implements it over the
workbench's own reader (`workbench.io.gguf_file.GGUFFile`), so the families never touch the file format
themselves. Each family declares the `{arch}.` keys it reads, with their kinds (`GGUFSpec.keys`); the
reader checks a file's values against that declaration before the family sees them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, Protocol, get_args

import numpy as np

from ..errors import CorruptFileError, UnsupportedModelError
from ..model.config import RopeScaling


class GGUFMeta(Protocol):
    """A GGUF file's header as the families read it."""

    def get(self, key: str, default: Any = None) -> Any:
        """One metadata value (str, number, bool or list), or `default`."""

    def require(self, key: str) -> Any:
        """One metadata value; a LoadError naming the key when the file lacks it."""

    def has_tensor(self, name: str) -> bool:
        """Whether the file holds a tensor of this GGUF name."""

    def rope_scaling(self, head_dim: int, theta: float) -> RopeScaling | None:
        """RoPE scaling from `{arch}.rope.scaling.*` and `rope_freqs.weight`, or None for plain RoPE."""


# What a declared key must hold when present: count: an integer > 0; positive: a finite number > 0;
# string; strings: a list of strings; bool.
GGUFKind = Literal["count", "positive", "string", "strings", "bool"]
GGUF_KINDS: tuple[str, ...] = get_args(GGUFKind)

# `{arch}.` keys behind `GGUFMeta.rope_scaling`: linear scaling and llama3's original context.
ROPE_SCALING_KEYS: Mapping[str, GGUFKind] = {
    "rope.scale_linear": "positive",
    "rope.scaling.factor": "positive",
    "rope.scaling.original_context_length": "count",
    "rope.scaling.type": "string",
}

# `{arch}.` keys `decoder_from_gguf` reads.
DECODER_KEYS: Mapping[str, GGUFKind] = {
    "block_count": "count",
    "embedding_length": "count",
    "feed_forward_length": "count",
    "context_length": "count",
    "vocab_size": "count",
    "attention.head_count": "count",
    "attention.head_count_kv": "count",
    "attention.key_length": "count",
    "attention.value_length": "count",
    "rope.dimension_count": "count",
    "rope.freq_base": "positive",
    "attention.layer_norm_rms_epsilon": "positive",
    **ROPE_SCALING_KEYS,
}


def float32(value: Any) -> float:
    """A float32 metadata value as the shortest decimal that round-trips (9.9999997e-06 -> 1e-05)."""
    return float(str(np.float32(value)))


def decoder_from_gguf(meta: GGUFMeta, arch: str) -> dict[str, Any]:
    """ModelConfig fields every llama.cpp decoder states under `{arch}.*` keys (those of DECODER_KEYS).

    The head width comes from `attention.key_length` when present (Gemma's differs from
    embedding_length / head_count); values and rotary must span the same width.
    """
    p = f"{arch}."
    d_model = int(meta.require(p + "embedding_length"))
    n_heads = int(meta.require(p + "attention.head_count"))
    if n_heads <= 0:
        raise CorruptFileError(f"GGUF {p}attention.head_count={n_heads}; it must be positive.")
    key_length = meta.get(p + "attention.key_length")
    head_dim = int(key_length) if key_length is not None else d_model // n_heads
    for key in ("attention.value_length", "rope.dimension_count"):
        value = meta.get(p + key)
        if value is not None and int(value) != head_dim:
            raise UnsupportedModelError(
                f"{p}{key}={value} differs from the head width {head_dim}; the workbench needs values as wide "
                "as keys and rotary over the whole head."
            )
    theta = float32(meta.get(p + "rope.freq_base", 10000.0))
    tokens = meta.get("tokenizer.ggml.tokens")
    return {
        "vocab_size": len(tokens) if tokens else int(meta.require(p + "vocab_size")),
        "d_model": d_model,
        "n_layers": int(meta.require(p + "block_count")),
        "n_heads": n_heads,
        "n_kv_heads": int(meta.get(p + "attention.head_count_kv", n_heads)),
        "attn_head_dim": None if d_model % n_heads == 0 and head_dim == d_model // n_heads else head_dim,
        "d_ff": int(meta.require(p + "feed_forward_length")),
        "max_seq_len": int(meta.get(p + "context_length", 2048)),
        "tie_embeddings": not meta.has_tensor("output.weight"),
        "rope_theta": theta,
        "rope_scaling": meta.rope_scaling(head_dim, theta),
        "norm_eps": float32(meta.get(p + "attention.layer_norm_rms_epsilon", 1e-5)),
    }
