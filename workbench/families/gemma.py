"""Gemma (HF `GemmaForCausalLM`, llama.cpp `gemma`): Llama's layout with four differences.

- RMSNorm scales by (1 + weight), in float32 (`norm_offset`); HF stores the offsets, llama.cpp's
  converter stores 1 + weight, so one is subtracted from GGUF norm weights.
- A GeGLU MLP: tanh-approximated GELU on the gate (`mlp="geglu"`).
- Token embeddings are multiplied by sqrt(d_model), rounded to the weights' dtype (`embed_scale`).
- The head width is its own hyperparameter (`head_dim`, 256 in HF's GemmaConfig when absent).
Embeddings are tied by default.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from ..model.config import ModelConfig
from .gguf_keys import DECODER_KEYS, GGUFMeta, decoder_from_gguf
from .hf_common import DECODER_FIELDS, decoder_from_hf, decoder_to_hf, head_dim_from_hf
from .hf_schema import HFFields
from .llama import GGUF_NAMING, HF_NAMING
from .registry import Family, GGUFSpec, Tensors, mismatches, register

# transformers reads a legacy "gelu" in a Gemma config as the tanh approximation, as Gemma was trained.
_ACTIVATIONS = ("gelu_pytorch_tanh", "gelu")
HF_HEAD_DIM = 256  # GemmaConfig's default head_dim
HF_FIELDS: HFFields = {
    **DECODER_FIELDS,
    "hidden_act": "string",
    "hidden_activation": "string",
    "use_bidirectional_attention": "bool",
    "attention_bias": "bool",
}


def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    fields = decoder_from_hf(hf, tie_default=True)
    act = hf.get("hidden_activation") or hf.get("hidden_act", "gelu_pytorch_tanh")  # transformers 4 / 5 name
    if act not in _ACTIVATIONS:
        raise ConfigError(
            f"Gemma hidden_act={act!r} is not supported; use 'gelu_pytorch_tanh' (the GeGLU of Gemma)."
        )
    if hf.get("use_bidirectional_attention"):
        raise ConfigError(
            "Gemma use_bidirectional_attention=true is not supported; the workbench's attention is causal. "
            "Set it to false in config.json."
        )
    bias = hf.get("attention_bias", False)  # one switch for q/k/v and the output projection
    return ModelConfig(
        **fields,
        attn_head_dim=head_dim_from_hf(hf, default=HF_HEAD_DIM),
        norm_offset=True,
        mlp="geglu",
        embed_scale=True,
        qkv_bias=bias,
        out_bias=bias,
    )


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
    return decoder_to_hf(config) | {
        "head_dim": config.head_dim,
        "hidden_act": "gelu_pytorch_tanh",
        "attention_bias": config.qkv_bias,
    }


def differences(config: ModelConfig) -> list[str]:
    return mismatches(
        config,
        positions="rope",
        norm="rmsnorm",
        norm_offset=True,
        norm_placement="pre",
        mlp="geglu",
        embed_scale=True,
        out_bias=config.qkv_bias,  # attention_bias covers q/k/v and the output projection together
        mlp_bias=False,
    )


def norms_minus_one(tensors: Tensors, config: ModelConfig) -> tuple[Tensors, list[str]]:
    """GGUF-named tensors with llama.cpp's stored 1 + weight turned back into Gemma's offsets."""
    out = {name: t - 1 if name.endswith("norm.weight") else t for name, t in tensors.items()}
    count = sum(name.endswith("norm.weight") for name in out)
    return out, [f"subtracted one from {count} norm weights (llama.cpp stores Gemma's 1 + weight)"]


def config_from_gguf(meta: GGUFMeta) -> ModelConfig:
    fields = decoder_from_gguf(meta, "gemma")
    return ModelConfig(**fields, norm_offset=True, mlp="geglu", embed_scale=True)


PRESETS = {  # 4 heads of 24 in a 64-wide model: a head width apart from d_model / n_heads, as Gemma 7B has
    "tiny-gemma": ModelConfig(
        n_kv_heads=1, attn_head_dim=24, norm_offset=True, mlp="geglu", embed_scale=True, norm_eps=1e-6
    ),
}


GEMMA = register(
    Family(
        name="gemma",
        hf_model_type="gemma",
        hf_architecture="GemmaForCausalLM",
        config_from_hf=config_from_hf,
        config_to_hf=config_to_hf,
        hf_naming=HF_NAMING,
        hf_fields=HF_FIELDS,
        differences=differences,
        gguf=GGUFSpec(
            arch="gemma",
            config_from_meta=config_from_gguf,
            naming=GGUF_NAMING,
            keys=DECODER_KEYS,
            fix_tensors=norms_minus_one,
        ),
        presets=PRESETS,
    )
)
