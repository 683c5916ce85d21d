"""Tiny random-weight models of 29 HF causal-LM families, built from transformers' own config classes.

They run HF's real implementation of each family; the sizes are the smallest each family accepts, so a
forward costs milliseconds on the CPU. `build(name)` is seeded: the same name gives the same weights.
Mistral's sliding window (6) is shorter than the prompts the tests use, so the window is exercised.
Beyond the first twelve, each family brings a layout the checks must read without a false alarm
(per-head norms, norms on sublayer outputs, layers without rotary, a declared or absent score
scale, parallel blocks, one key/value head, latent attention, ALiBi).
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
    # StableLM: a LayerNorm per head on q and k (a ModuleList longer than the block list in real checkpoints)
    "stablelm": ("StableLmConfig", "StableLmForCausalLM",
                 {**LLAMA_LIKE, "partial_rotary_factor": 0.5, "qk_layernorm": True}),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", LLAMA_LIKE),  # norms on the sublayer outputs, q/k norms
    "smollm3": ("SmolLM3Config", "SmolLM3ForCausalLM",  # every second layer without rotary (NoPE)
                {**LLAMA_LIKE, "num_hidden_layers": 4, "no_rope_layer_interval": 2}),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM",  # logit soft-capping, four norms per block, eager only
               {**LLAMA_LIKE, "head_dim": 8, "sliding_window": 6, "query_pre_attn_scalar": 8}),
    "cohere": ("CohereConfig", "CohereForCausalLM", LLAMA_LIKE),  # attention and MLP in parallel, logit scale
    "phi": ("PhiConfig", "PhiForCausalLM", {**LLAMA_LIKE, "partial_rotary_factor": 0.5}),
    "gptj": ("GPTJConfig", "GPTJForCausalLM", dict(n_embd=32, n_layer=2, n_head=4, n_positions=64, rotary_dim=4)),
    "falcon": ("FalconConfig", "FalconForCausalLM",  # one key/value head, parallel attention
               dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, new_decoder_architecture=False,
                    multi_query=True)),
    "gpt_bigcode": ("GPTBigCodeConfig", "GPTBigCodeForCausalLM",
                    dict(n_embd=32, n_layer=2, n_head=4, n_positions=64, multi_query=True)),
    "granite": ("GraniteConfig", "GraniteForCausalLM",  # a declared attention scale and residual multipliers
                {**LLAMA_LIKE, "attention_multiplier": 0.3, "residual_multiplier": 0.5, "embedding_multiplier": 2.0,
                 "logits_scaling": 4.0}),
    "starcoder2": ("Starcoder2Config", "Starcoder2ForCausalLM", {**LLAMA_LIKE, "sliding_window": 6}),
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM",  # routed and shared experts
                  {**LLAMA_LIKE, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16,
                   "shared_expert_intermediate_size": 32}),
    "deepseek_v3": ("DeepseekV3Config", "DeepseekV3ForCausalLM",  # multi-head latent attention, MoE
                    {**LLAMA_LIKE, "num_key_value_heads": 4, "q_lora_rank": 16, "kv_lora_rank": 16,
                     "qk_rope_head_dim": 4, "qk_nope_head_dim": 4, "v_head_dim": 8, "n_routed_experts": 4,
                     "num_experts_per_tok": 2, "moe_intermediate_size": 16, "first_k_dense_replace": 1,
                     "n_group": 1, "topk_group": 1}),
    "gpt_neo": ("GPTNeoConfig", "GPTNeoForCausalLM",  # no 1/sqrt(d) scale, local attention layers, eager only
                dict(hidden_size=32, num_layers=2, num_heads=4, max_position_embeddings=64,
                     attention_types=[[["global", "local"], 1]], window_size=6)),
    "codegen": ("CodeGenConfig", "CodeGenForCausalLM",
                dict(n_embd=32, n_layer=2, n_head=4, n_positions=64, rotary_dim=4)),
    "biogpt": ("BioGptConfig", "BioGptForCausalLM",
               dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                    max_position_embeddings=64)),
    "mpt": ("MptConfig", "MptForCausalLM", dict(d_model=32, n_layers=2, n_heads=4, max_seq_len=64)),  # ALiBi
}
FAMILIES = tuple(SPECS)


EAGER_ONLY = {"bloom", "gemma2", "gpt_neo", "mpt"}  # families without an SDPA path in transformers


def build(name: str, seed: int = 0, attn: str = "sdpa", **fields: Any) -> torch.nn.Module:
    """The family's tiny causal LM in eval mode, float32, with `attn` as its attention implementation
    ("sdpa" falls back to "eager" for the families that have no SDPA path); `fields` sets more config
    fields (use_cache=False, return_dict=False)."""
    import transformers

    config_cls, model_cls, sizes = SPECS[name]
    config = getattr(transformers, config_cls)(**COMMON, **sizes, **fields)
    config._attn_implementation = "eager" if name in EAGER_ONLY else attn
    torch.manual_seed(seed)
    return getattr(transformers, model_cls)(config).eval()
