"""Tiny random-weight models of twelve HF causal-LM families, built from transformers' own config classes.

They run HF's real implementation of each family; the sizes are the smallest each family accepts, so a
forward costs milliseconds on the CPU. `build(name)` is seeded: the same name gives the same weights.
Mistral's sliding window (6) is shorter than the prompts the tests use, so the window is exercised.
"""

from __future__ import annotations

from typing import Any

import torch

VOCAB = 128
COMMON = dict(vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=0)
LLAMA_LIKE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64)

SPECS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", LLAMA_LIKE),
    "mistral": ("MistralConfig", "MistralForCausalLM", {**LLAMA_LIKE, "sliding_window": 6}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", LLAMA_LIKE),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {**LLAMA_LIKE, "head_dim": 8}),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", {**LLAMA_LIKE, "head_dim": 8}),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM",
               {**LLAMA_LIKE, "head_dim": 8, "sliding_window": 6, "query_pre_attn_scalar": 8}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", LLAMA_LIKE),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM",
                 dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      max_position_embeddings=64, rotary_pct=0.5)),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(n_embd=32, n_layer=2, n_head=4, n_positions=64)),
    "opt": ("OPTConfig", "OPTForCausalLM",
            dict(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                 max_position_embeddings=64, word_embed_proj_dim=32)),
    "bloom": ("BloomConfig", "BloomForCausalLM", dict(hidden_size=32, n_layer=2, n_head=4)),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM",
                {**LLAMA_LIKE, "num_local_experts": 4, "num_experts_per_tok": 2}),
}
FAMILIES = tuple(SPECS)


EAGER_ONLY = {"bloom"}  # families without an SDPA path in transformers


def build(name: str, seed: int = 0, attn: str = "sdpa") -> torch.nn.Module:
    """The family's tiny causal LM in eval mode, float32, with `attn` as its attention implementation
    ("sdpa" falls back to "eager" for the families that have no SDPA path)."""
    import transformers

    config_cls, model_cls, sizes = SPECS[name]
    config = getattr(transformers, config_cls)(**COMMON, **sizes)
    config._attn_implementation = "eager" if name in EAGER_ONLY else attn
    torch.manual_seed(seed)
    return getattr(transformers, model_cls)(config).eval()
