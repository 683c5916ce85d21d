"""Qwen2 (HF `Qwen2ForCausalLM`, llama.cpp `qwen2`): Llama's layout with biases on q/k/v only.

The output projection and the MLP have no bias. HF Qwen2 can slide a window over the keys in its
upper layers (`use_sliding_window`, `sliding_window`, `max_window_layers`, or `layer_types`); the
workbench attends over the whole context, so configs in which any layer slides are refused.
llama.cpp stores Qwen2 under Llama's tensor names, without permuting q/k rows (its RoPE is half-split).
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from ..model.config import ModelConfig
from .gguf_keys import DECODER_KEYS, GGUFMeta, decoder_from_gguf
from .hf_common import DECODER_FIELDS, decoder_from_hf, decoder_to_hf, head_dim_from_hf
from .hf_schema import HFFields
from .llama import GGUF_NAMING, HF_NAMING
from .registry import Family, GGUFSpec, mismatches, register

HF_FIELDS: HFFields = {
    **DECODER_FIELDS,
    "hidden_act": "string",
    "use_sliding_window": "bool",
    "sliding_window": "count",
    "max_window_layers": "index",
    "layer_types": "strings",
}


def _refuse_sliding_window(hf: dict[str, Any]) -> None:
    """Raise when any layer slides its window, decided as transformers' Qwen2Config decides it."""
    n = hf["num_hidden_layers"]
    if hf.get("layer_types") is not None:
        sliding = [i for i, kind in enumerate(hf["layer_types"]) if kind == "sliding_attention"]
        where = f"layer_types marks layers {sliding} as sliding_attention"
    else:
        window = hf.get("sliding_window") if hf.get("use_sliding_window", False) else None
        first = hf.get("max_window_layers", 28)
        sliding = list(range(first, n)) if window is not None else []
        where = f"use_sliding_window=true with sliding_window={window} from layer max_window_layers={first} of {n}"
    if sliding:
        raise ConfigError(
            f"Qwen2 sliding-window attention is not supported: {where}. The workbench attends over the whole "
            "context; set use_sliding_window to false (and drop sliding layer_types) in config.json, which is "
            "exact for sequences no longer than the window."
        )


def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    fields = decoder_from_hf(hf, tie_default=False)
    _refuse_sliding_window(hf)
    if hf.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"Qwen2 hidden_act={hf['hidden_act']!r} is not supported; use 'silu'.")
    if head_dim_from_hf(hf) is not None:
        raise ConfigError(
            f"Qwen2 head_dim={hf['head_dim']} differs from hidden_size / num_attention_heads = "
            f"{fields['d_model'] / fields['n_heads']:g}; transformers' Qwen2Config has no head_dim, so such a "
            "config is refused. Remove head_dim from config.json."
        )
    return ModelConfig(**fields, mlp="swiglu", qkv_bias=True, out_bias=False, mlp_bias=False)


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
    return decoder_to_hf(config) | {
        "hidden_act": "silu",
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": config.n_layers,
    }


def differences(config: ModelConfig) -> list[str]:
    return mismatches(
        config,
        positions="rope",
        norm="rmsnorm",
        norm_offset=False,
        norm_placement="pre",
        mlp="swiglu",
        embed_scale=False,
        head_dim=config.d_model / config.n_heads,  # no separate head width
        qkv_bias=True,
        out_bias=False,
        mlp_bias=False,
    )


def config_from_gguf(meta: GGUFMeta) -> ModelConfig:
    return ModelConfig(**decoder_from_gguf(meta, "qwen2"), mlp="swiglu", qkv_bias=True, out_bias=False)


PRESETS = {"tiny-qwen2": ModelConfig(n_kv_heads=2, qkv_bias=True, tie_embeddings=False)}


QWEN2 = register(
    Family(
        name="qwen2",
        hf_model_type="qwen2",
        hf_architecture="Qwen2ForCausalLM",
        config_from_hf=config_from_hf,
        config_to_hf=config_to_hf,
        hf_naming=HF_NAMING,
        hf_fields=HF_FIELDS,
        differences=differences,
        gguf=GGUFSpec(arch="qwen2", config_from_meta=config_from_gguf, naming=GGUF_NAMING, keys=DECODER_KEYS),
        presets=PRESETS,
    )
)
