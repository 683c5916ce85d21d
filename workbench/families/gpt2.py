"""GPT-2 (HF `GPT2LMHeadModel`): learned positions, LayerNorm, tanh-GELU MLP, biases everywhere.

HF stores its linear weights as Conv1D (in, out), transposed here, and its fused `c_attn` is the
workbench's `qkv`. GGUF files of this family are not read (llama.cpp's gpt2 files are refused by name).
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from ..model.config import ModelConfig
from .hf_schema import HFFields
from .naming import Naming
from .registry import Family, mismatches, register

_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")  # both the tanh approximation the workbench computes

HF_NAMING = Naming(
    prefix="transformer.",
    layer="h.{i}.",
    block={
        "ln_1": "ln_attn",
        "ln_2": "ln_mlp",
        "attn.c_attn": "attn.qkv",
        "attn.c_proj": "attn.out",
        "mlp.c_fc": "mlp.up",
        "mlp.c_proj": "mlp.down",
    },
    transposed=("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"),
    top={
        "wte.weight": "embed.weight",
        "wpe.weight": "pos_embed.weight",
        "ln_f.weight": "ln_f.weight",
        "ln_f.bias": "ln_f.bias",
        "lm_head.weight": "lm_head.weight",
    },
)

HF_FIELDS: HFFields = {
    "vocab_size": "count",
    "n_embd": "count",
    "n_layer": "count",
    "n_head": "count",
    "n_inner": "count",
    "n_positions": "count",
    "activation_function": "string",
    "tie_word_embeddings": "bool",
    "layer_norm_epsilon": "positive",
    "initializer_range": "positive",
}


def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    d = hf["n_embd"]
    act = hf.get("activation_function", "gelu_new")
    if act not in _ACTIVATIONS:
        raise ConfigError(f"GPT-2 activation_function={act!r} is not supported; use 'gelu_new'.")
    return ModelConfig(
        vocab_size=hf["vocab_size"],
        d_model=d,
        n_layers=hf["n_layer"],
        n_heads=hf["n_head"],
        d_ff=hf.get("n_inner") or 4 * d,
        max_seq_len=hf["n_positions"],
        positions="learned",
        norm="layernorm",
        norm_placement="pre",
        mlp="gelu",
        tie_embeddings=hf.get("tie_word_embeddings", True),
        qkv_bias=True,
        out_bias=True,
        mlp_bias=True,
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        dropout=0.0,
        init_std=hf.get("initializer_range", 0.02),
    )


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
    return {
        "vocab_size": config.vocab_size,
        "n_embd": config.d_model,
        "n_layer": config.n_layers,
        "n_head": config.n_heads,
        "n_inner": config.d_ff,
        "n_positions": config.max_seq_len,
        "n_ctx": config.max_seq_len,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": config.norm_eps,
        "tie_word_embeddings": config.tie_embeddings,
        "initializer_range": config.init_std,
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
    }


def differences(config: ModelConfig) -> list[str]:
    return mismatches(
        config,
        positions="learned",
        norm="layernorm",
        norm_placement="pre",
        mlp="gelu",
        kv_heads=config.n_heads,  # multi-head attention only
        head_dim=config.d_model / config.n_heads,  # no separate head width
        qkv_bias=True,
        out_bias=True,
        mlp_bias=True,
        embed_scale=False,
    )


PRESETS = {
    "tiny-gpt2": ModelConfig(positions="learned", norm="layernorm", mlp="gelu", attn_bias=True, mlp_bias=True),
    "gpt2-small": ModelConfig(
        vocab_size=50257,
        d_model=768,
        n_layers=12,
        n_heads=12,
        d_ff=3072,
        max_seq_len=1024,
        positions="learned",
        norm="layernorm",
        mlp="gelu",
        attn_bias=True,
        mlp_bias=True,
    ),
}


GPT2 = register(
    Family(
        name="gpt2",
        hf_model_type="gpt2",
        hf_architecture="GPT2LMHeadModel",
        config_from_hf=config_from_hf,
        config_to_hf=config_to_hf,
        hf_naming=HF_NAMING,
        hf_fields=HF_FIELDS,
        differences=differences,
        presets=PRESETS,
    )
)
