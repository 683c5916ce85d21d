"""HF `config.json` fields that Llama and the families derived from it (Qwen2, Gemma) spell alike.

RoPE (`rope_theta`, `rope_scaling` / `rope_parameters`), the sizes, the norm epsilon and tying are
read and written here once; each family module adds only what makes it different.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from ..model.config import ModelConfig, RopeScaling
from .hf_schema import HFFields

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")

# The fields `decoder_from_hf` and `head_dim_from_hf` read; a family adds its own to these.
DECODER_FIELDS: HFFields = {
    "vocab_size": "count",
    "hidden_size": "count",
    "num_hidden_layers": "count",
    "num_attention_heads": "count",
    "num_key_value_heads": "count",
    "intermediate_size": "count",
    "max_position_embeddings": "count",
    "original_max_position_embeddings": "count",
    "head_dim": "count",
    "tie_word_embeddings": "bool",
    "rope_theta": "positive",
    "rms_norm_eps": "positive",
    "initializer_range": "positive",
    "rope_scaling": "rope",
    "rope_parameters": "rope",
}


def decoder_from_hf(hf: dict[str, Any], *, tie_default: bool) -> dict[str, Any]:
    """ModelConfig fields shared by the Llama lineage (a missing required key raises KeyError).

    The RoPE type is read first: an unsupported one is the real problem of such a config.
    """
    rope_scaling = rope_scaling_from_hf(hf)
    d, h = hf["hidden_size"], hf["num_attention_heads"]
    return {
        "vocab_size": hf["vocab_size"],
        "d_model": d,
        "n_layers": hf["num_hidden_layers"],
        "n_heads": h,
        "n_kv_heads": hf.get("num_key_value_heads") or h,
        "d_ff": hf["intermediate_size"],
        "max_seq_len": hf.get("max_position_embeddings", 2048),
        "positions": "rope",
        "norm": "rmsnorm",
        "norm_placement": "pre",
        "tie_embeddings": hf.get("tie_word_embeddings", tie_default),
        "rope_theta": rope_theta_from_hf(hf),
        "rope_scaling": rope_scaling,
        "norm_eps": hf.get("rms_norm_eps", 1e-6),
        "dropout": 0.0,
        "init_std": hf.get("initializer_range", 0.02),
    }


def decoder_to_hf(config: ModelConfig) -> dict[str, Any]:
    """The `config.json` entries `decoder_from_hf` reads, for transformers' Llama-lineage configs."""
    out: dict[str, Any] = {
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.kv_heads,
        "intermediate_size": config.d_ff,
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,
        "tie_word_embeddings": config.tie_embeddings,
        "initializer_range": config.init_std,
        "attention_dropout": config.dropout,
    }
    if config.rope_scaling is not None:
        out["rope_scaling"] = rope_scaling_to_hf(config.rope_scaling)
    return out


def head_dim_from_hf(hf: dict[str, Any], default: int | None = None) -> int | None:
    """`attn_head_dim` for a config's `head_dim`: None when it equals hidden_size / num_attention_heads."""
    d, h = hf["hidden_size"], hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or default
    if head_dim is None or (d % h == 0 and head_dim == d // h):
        return None
    return int(head_dim)


def rope_theta_from_hf(hf: dict[str, Any]) -> float:
    """RoPE's base: transformers 4 writes rope_theta at the top level, 5 inside rope_parameters."""
    nested = ((hf.get(key) or {}).get("rope_theta") for key in ("rope_parameters", "rope_scaling"))
    thetas = (hf.get("rope_theta"), *nested)
    return float(next((t for t in thetas if t is not None), 10000.0))


def rope_scaling_from_hf(hf: dict[str, Any]) -> RopeScaling | None:
    """The RopeScaling in a Llama-lineage config: `rope_scaling` (transformers 4) or `rope_parameters` (5).

    Keys are read as transformers reads them: `rope_type` before the older `type`, and llama3's
    original context from a top-level `original_max_position_embeddings`, then the dict, then
    `max_position_embeddings`. Types that change more than inv_freq (dynamic, yarn, ...) are refused.
    """
    params = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
    if not isinstance(params, dict):
        raise ConfigError(f"rope_scaling / rope_parameters must be a JSON object, got {params!r}.")
    kind = params.get("rope_type", params.get("type")) or "default"
    if kind not in SUPPORTED_ROPE_TYPES:
        raise ConfigError(
            f"rope_scaling type {kind!r} is not supported; only {SUPPORTED_ROPE_TYPES} RoPE types are "
            f"(got rope_scaling={params!r}). Such configs are refused rather than approximated."
        )
    if params.get("partial_rotary_factor") not in (None, 1, 1.0):
        raise ConfigError(
            f"partial_rotary_factor={params['partial_rotary_factor']} is not supported; "
            "the workbench rotates the whole head."
        )
    if kind == "default":
        return None
    needed = ("factor",) if kind == "linear" else ("factor", "low_freq_factor", "high_freq_factor")
    missing = [key for key in needed if params.get(key) is None]
    if missing:
        raise ConfigError(f"{kind} rope_scaling lacks {missing} (got {params!r}); add them to config.json.")
    original = hf.get("original_max_position_embeddings") or params.get("original_max_position_embeddings")
    original = original or hf.get("max_position_embeddings", 2048)
    try:
        if kind == "linear":
            return RopeScaling("linear", float(params["factor"]))
        return RopeScaling(
            "llama3",
            float(params["factor"]),
            low_freq_factor=float(params["low_freq_factor"]),
            high_freq_factor=float(params["high_freq_factor"]),
            original_max_seq_len=int(original),
        )
    except ConfigError:  # a ValueError too: keep its own message
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{kind} rope_scaling holds a non-numeric value ({exc}): {params!r}.") from None


def rope_scaling_to_hf(scaling: RopeScaling) -> dict[str, Any]:
    """The `rope_scaling` entry transformers (4.43+ and 5) reads back into the same inv_freq."""
    if scaling.kind == "linear":
        return {"rope_type": "linear", "factor": scaling.factor}
    return {
        "rope_type": "llama3",
        "factor": scaling.factor,
        "low_freq_factor": scaling.low_freq_factor,
        "high_freq_factor": scaling.high_freq_factor,
        "original_max_position_embeddings": scaling.original_max_seq_len,
    }
