"""Renaming state dicts between workbench naming and HF transformers naming (GPT-2 and Llama).

GPT-2 stores linear weights as Conv1D (in, out), so they are transposed, and its fused `c_attn`
matches the workbench's fused `qkv`. Llama keeps q/k/v and gate/up separate, so they are
concatenated into the fused workbench projections and split again on the way out.
"""

from __future__ import annotations

import re

import torch

from ..model.config import ModelConfig
from ..model.hf_config import hf_architecture

# HF keys that carry no weights (old buffers); dropped with a note instead of reported as unexpected.
IGNORED = re.compile(r"(\.attn\.(bias|masked_bias)$|rotary_emb\.inv_freq$)")

_GPT2_BLOCK = {
    "ln_1": "ln_attn",
    "ln_2": "ln_mlp",
    "attn.c_attn": "attn.qkv",
    "attn.c_proj": "attn.out",
    "mlp.c_fc": "mlp.up",
    "mlp.c_proj": "mlp.down",
}
_GPT2_CONV1D = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
_LLAMA_BLOCK = {
    "input_layernorm": "ln_attn",
    "post_attention_layernorm": "ln_mlp",
    "self_attn.o_proj": "attn.out",
    "mlp.down_proj": "mlp.down",
}
_LLAMA_FUSED = {
    "attn.qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "mlp.up": ("mlp.gate_proj", "mlp.up_proj"),
}


def from_hf(state: dict[str, torch.Tensor], config: ModelConfig) -> tuple[dict[str, torch.Tensor], list[str]]:
    """HF-named tensors -> workbench-named tensors; unknown keys are kept (the load report lists them)."""
    arch = hf_architecture(config)
    dropped = [k for k in state if IGNORED.search(k)]
    state = {k: v for k, v in state.items() if k not in dropped}
    notes = [f"ignored {len(dropped)} non-weight buffers (e.g. {dropped[0]})"] if dropped else []
    return (_gpt2_in(state) if arch == "gpt2" else _llama_in(state, config)), notes


def to_hf(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Workbench-named tensors -> HF naming (tied LM head omitted, as transformers saves it)."""
    arch = hf_architecture(config)
    out = _gpt2_out(state, config) if arch == "gpt2" else _llama_out(state, config)
    if config.tie_embeddings:
        out.pop("lm_head.weight", None)
    return {k: v.contiguous() for k, v in out.items()}


def _gpt2_in(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        name = key.removeprefix("transformer.")
        if m := re.fullmatch(r"h\.(\d+)\.(.+)\.(weight|bias)", name):
            layer, sub, kind = m.groups()
            if sub in _GPT2_BLOCK:
                if sub in _GPT2_CONV1D and kind == "weight":
                    value = value.t()
                out[f"blocks.{layer}.{_GPT2_BLOCK[sub]}.{kind}"] = value
                continue
        top = {
            "wte.weight": "embed.weight",
            "wpe.weight": "pos_embed.weight",
            "ln_f.weight": "ln_f.weight",
            "ln_f.bias": "ln_f.bias",
            "lm_head.weight": "lm_head.weight",
        }
        out[top.get(name, key)] = value
    return out


def _gpt2_out(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    back = {v: k for k, v in _GPT2_BLOCK.items()}
    out = {}
    for key, value in state.items():
        if m := re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias)", key):
            layer, sub, kind = m.groups()
            hf_sub = back[sub]
            if hf_sub in _GPT2_CONV1D and kind == "weight":
                value = value.t()
            out[f"transformer.h.{layer}.{hf_sub}.{kind}"] = value
        elif key == "lm_head.weight":
            out[key] = value
        else:
            top = {"embed.weight": "wte.weight", "pos_embed.weight": "wpe.weight"}
            out["transformer." + top.get(key, key)] = value
    return out


def _llama_in(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    parts: dict[str, dict[int, tuple[str, torch.Tensor]]] = {}
    fused_from = {hf: (wb, i) for wb, hfs in _LLAMA_FUSED.items() for i, hf in enumerate(hfs)}
    for key, value in state.items():
        if m := re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)", key):
            layer, sub, kind = m.groups()
            if sub in _LLAMA_BLOCK:
                out[f"blocks.{layer}.{_LLAMA_BLOCK[sub]}.{kind}"] = value
                continue
            if sub in fused_from:
                wb, i = fused_from[sub]
                parts.setdefault(f"blocks.{layer}.{wb}.{kind}", {})[i] = (key, value)
                continue
        top = {"model.embed_tokens.weight": "embed.weight", "model.norm.weight": "ln_f.weight"}
        out[top.get(key, key)] = value
    for wb_key, pieces in parts.items():
        needed = 3 if ".attn.qkv." in wb_key else 2
        if len(pieces) == needed:
            out[wb_key] = torch.cat([pieces[i][1] for i in range(needed)], dim=0)
        else:  # an incomplete group cannot be fused: keep its pieces under their HF names
            out.update({name: v for name, v in pieces.values()})
    return out


def _llama_out(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    back = {v: k for k, v in _LLAMA_BLOCK.items()}
    H, K, D, F = config.n_heads, config.kv_heads, config.head_dim, config.d_ff
    splits = {"attn.qkv": (H * D, K * D, K * D), "mlp.up": (F, F)}
    out = {}
    for key, value in state.items():
        if m := re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias)", key):
            layer, sub, kind = m.groups()
            prefix = f"model.layers.{layer}."
            if sub in splits:
                for hf_sub, piece in zip(_LLAMA_FUSED[sub], value.split(splits[sub], dim=0)):
                    out[f"{prefix}{hf_sub}.{kind}"] = piece
            else:
                out[f"{prefix}{back[sub]}.{kind}"] = value
        else:
            top = {"embed.weight": "model.embed_tokens.weight", "ln_f.weight": "model.norm.weight"}
            out[top.get(key, key)] = value
    return out
