"""Mistral (HF `MistralForCausalLM`): Llama's layout without biases, and a sliding attention window.

In transformers every layer of a Mistral attends to the last `sliding_window` positions only
(Mistral 7B v0.1: 4096 of 32768). The workbench attends over the whole context, so a config whose
window is shorter than `max_position_embeddings` is refused; a window at least that long hides
nothing, and v0.2 and later write `sliding_window: null`, so those configs load as they are.

GGUF: llama.cpp's converter writes `MistralForCausalLM` as architecture `llama` (its `LlamaModel`:
the same metadata keys, the same tensor names, q/k rows permuted as Llama's) and writes no window, so
nothing in the file says Mistral. The llama family reads those files into the `ModelConfig` this
family would build from the HF checkpoint; this family declares no GGUF spec of its own.

Every config this family holds, the llama family holds too, so it is not `preferred`: a HF save
writes `LlamaForCausalLM`, which transformers runs to the same logits, unless the caller asks for
`wb.save_pretrained(model, dir, format="hf", family="mistral")`.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from ..model.config import ModelConfig
from .hf_common import DECODER_FIELDS, decoder_from_hf, decoder_to_hf, head_dim_from_hf
from .hf_schema import HFFields
from .llama import HF_NAMING
from .registry import Family, mismatches, register

HF_MAX_POSITIONS = 4096 * 32  # MistralConfig's max_position_embeddings when config.json has none
HF_FIELDS: HFFields = {**DECODER_FIELDS, "hidden_act": "string", "sliding_window": "count"}


def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    fields = decoder_from_hf(hf, tie_default=False)
    fields["max_seq_len"] = hf.get("max_position_embeddings", HF_MAX_POSITIONS)
    window = hf.get("sliding_window")
    if window is not None and window < fields["max_seq_len"]:
        raise ConfigError(
            f"Mistral sliding_window={window} is shorter than max_position_embeddings={fields['max_seq_len']}: "
            f"each position attends to the last {window} only, and the workbench attends over the whole context. "
            "Set sliding_window to null in config.json, which is exact for sequences no longer than the window."
        )
    if hf.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"Mistral hidden_act={hf['hidden_act']!r} is not supported; use 'silu'.")
    return ModelConfig(**fields, attn_head_dim=head_dim_from_hf(hf), mlp="swiglu")


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
    return decoder_to_hf(config) | {"head_dim": config.head_dim, "hidden_act": "silu", "sliding_window": None}


def differences(config: ModelConfig) -> list[str]:
    return mismatches(
        config,
        positions="rope",
        norm="rmsnorm",
        norm_offset=False,
        norm_placement="pre",
        mlp="swiglu",
        embed_scale=False,
        qkv_bias=False,
        out_bias=False,
        mlp_bias=False,
    )


PRESETS = {"tiny-mistral": ModelConfig(n_kv_heads=2, tie_embeddings=False, norm_eps=1e-6)}


MISTRAL = register(
    Family(
        name="mistral",
        hf_model_type="mistral",
        hf_architecture="MistralForCausalLM",
        config_from_hf=config_from_hf,
        config_to_hf=config_to_hf,
        hf_naming=HF_NAMING,
        hf_fields=HF_FIELDS,
        differences=differences,
        presets=PRESETS,
        preferred=False,
    )
)
