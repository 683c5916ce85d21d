"""Llama (HF `LlamaForCausalLM`, llama.cpp `llama`): RoPE, RMSNorm, SwiGLU, optional biases.

HF keeps q/k/v and gate/up as separate projections; the workbench fuses them ([q; k; v] and
[gate; up] rows). llama.cpp's converter permutes the rows of q and k so that RoPE rotates adjacent
pairs (x0, x1), (x2, x3), ...; the workbench (like HF) rotates the two halves of each head, so the
rows are permuted back (`unpermute_rope_rows`, the inverse of `permute_rope_rows`; both declared as
`LLAMA_CPP_ROPE`). Qwen2 and Gemma use the same tensor names.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError
from ..model.config import ModelConfig
from .gguf_keys import DECODER_KEYS, GGUFMeta, decoder_from_gguf
from .hf_common import DECODER_FIELDS, decoder_from_hf, decoder_to_hf, head_dim_from_hf
from .hf_schema import HFFields
from .naming import Naming
from .registry import Family, GGUFSpec, RowPermutation, Tensors, mismatches, register

HF_NAMING = Naming(
    prefix="model.",
    layer="layers.{i}.",
    block={
        "input_layernorm": "ln_attn",
        "post_attention_layernorm": "ln_mlp",
        "self_attn.o_proj": "attn.out",
        "mlp.down_proj": "mlp.down",
    },
    fused={
        "attn.qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        "mlp.up": ("mlp.gate_proj", "mlp.up_proj"),
    },
    top={"embed_tokens.weight": "embed.weight", "norm.weight": "ln_f.weight", "lm_head.weight": "lm_head.weight"},
)

GGUF_NAMING = Naming(
    layer="blk.{i}.",
    block={"attn_norm": "ln_attn", "attn_output": "attn.out", "ffn_norm": "ln_mlp", "ffn_down": "mlp.down"},
    fused={"attn.qkv": ("attn_q", "attn_k", "attn_v"), "mlp.up": ("ffn_gate", "ffn_up")},
    top={"token_embd.weight": "embed.weight", "output_norm.weight": "ln_f.weight", "output.weight": "lm_head.weight"},
    unprefixed=(),
)

HF_FIELDS: HFFields = {**DECODER_FIELDS, "hidden_act": "string", "attention_bias": "bool", "mlp_bias": "bool"}


def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    fields = decoder_from_hf(hf, tie_default=False)
    if hf.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"Llama hidden_act={hf['hidden_act']!r} is not supported; use 'silu'.")
    bias = hf.get("attention_bias", False)  # one switch for q/k/v and the output projection
    return ModelConfig(
        **fields,
        attn_head_dim=head_dim_from_hf(hf),
        mlp="swiglu",
        qkv_bias=bias,
        out_bias=bias,
        mlp_bias=hf.get("mlp_bias", False),
    )


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
    return decoder_to_hf(config) | {
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "attention_bias": config.qkv_bias,
        "mlp_bias": config.mlp_bias,
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
        out_bias=config.qkv_bias,  # attention_bias covers q/k/v and the output projection together
    )


def permute_rope_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """llama.cpp's q/k row order: per head, half-split rows (half e, j) go to pairs (pair j, element e).

    w: (H*D, C) with each head's rows in HF's half-split order; returns (H*D, C) as GGUF stores it.
    """
    rows, C = w.shape
    D = rows // n_heads
    halves = w.reshape(n_heads, 2, D // 2, C)  # (H, 2, D/2, C): row = (half e, j)
    return halves.transpose(1, 2).reshape(rows, C)  # (H, D/2, 2, C) -> (H*D, C): row = (pair j, element e)


def unpermute_rope_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's q/k row order: per head, rows (pair j, element e) go back to (half e, j).

    w: (H*D, C) as stored in GGUF, rows of each head ordered x0, x1, x2, ... pairwise;
    returns (H*D, C) with each head's rows in HF's half-split order.
    """
    rows, C = w.shape
    D = rows // n_heads
    pairs = w.reshape(n_heads, D // 2, 2, C)  # (H, D/2, 2, C): row = (pair j, element e)
    return pairs.transpose(1, 2).reshape(rows, C)  # (H, 2, D/2, C) -> (H*D, C): row = (half e, j)


LLAMA_CPP_ROPE = RowPermutation(
    name="rope",
    apply=permute_rope_rows,
    undo=unpermute_rope_rows,
    applied="with its q/k rows permuted as llama.cpp does (pairs instead of halves)",
    undone="with llama.cpp's q/k row permutation undone (halves instead of pairs)",
)


def unpermute_qk(tensors: Tensors, config: ModelConfig) -> tuple[Tensors, list[str]]:
    """GGUF-named tensors with llama.cpp's q/k row permutation undone in every layer."""
    out = dict(tensors)
    for i in range(config.n_layers):
        for part, heads in (("attn_q.weight", config.n_heads), ("attn_k.weight", config.kv_heads)):
            name = f"blk.{i}.{part}"
            if name in out:
                out[name] = unpermute_rope_rows(out[name], heads)
    return out, [f"undid llama.cpp's q/k row permutation in {config.n_layers} layers"]


def config_from_gguf(meta: GGUFMeta) -> ModelConfig:
    return ModelConfig(**decoder_from_gguf(meta, "llama"), mlp="swiglu")


PRESETS = {
    "tiny": ModelConfig(),  # ModelConfig's defaults: 2 layers of 64, 4 heads, RoPE, RMSNorm, SwiGLU, tied
    "smollm2-135m": ModelConfig(
        vocab_size=49152,
        d_model=576,
        n_layers=30,
        n_heads=9,
        n_kv_heads=3,
        d_ff=1536,
        max_seq_len=8192,
        rope_theta=100000.0,
    ),
}


LLAMA = register(
    Family(
        name="llama",
        hf_model_type="llama",
        hf_architecture="LlamaForCausalLM",
        config_from_hf=config_from_hf,
        config_to_hf=config_to_hf,
        hf_naming=HF_NAMING,
        hf_fields=HF_FIELDS,
        differences=differences,
        gguf=GGUFSpec(
            arch="llama",
            config_from_meta=config_from_gguf,
            naming=GGUF_NAMING,
            keys=DECODER_KEYS,
            fix_tensors=unpermute_qk,
        ),
        presets=PRESETS,
        permutations=(LLAMA_CPP_ROPE,),
    )
)
