"""A workbench llama model's weights as llama.cpp names and lays them out in a GGUF file (test helper)."""

from __future__ import annotations

import numpy as np
import torch

import workbench as wb


def to_pair_order(w: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's converter: each head's rows go from (half, j) order to (pair j, element) order."""
    rows, C = w.shape
    return w.reshape(heads, 2, rows // heads // 2, C).transpose(1, 2).reshape(rows, C)


def llama_tensors(model: wb.TransformerLM) -> dict[str, np.ndarray]:
    """GGUF tensor name -> array, q/k rows permuted as llama.cpp stores them."""
    cfg, sd = model.config, model.state_dict()
    H, K, D = cfg.n_heads, cfg.kv_heads, cfg.head_dim
    out = {"token_embd.weight": sd["embed.weight"], "output_norm.weight": sd["ln_f.weight"]}
    if not cfg.tie_embeddings:
        out["output.weight"] = sd["lm_head.weight"]
    for i in range(cfg.n_layers):
        q, k, v = sd[f"blocks.{i}.attn.qkv.weight"].split((H * D, K * D, K * D))
        gate, up = sd[f"blocks.{i}.mlp.up.weight"].chunk(2)
        out |= {
            f"blk.{i}.attn_q.weight": to_pair_order(q, H),
            f"blk.{i}.attn_k.weight": to_pair_order(k, K),
            f"blk.{i}.attn_v.weight": v,
            f"blk.{i}.attn_output.weight": sd[f"blocks.{i}.attn.out.weight"],
            f"blk.{i}.ffn_gate.weight": gate,
            f"blk.{i}.ffn_up.weight": up,
            f"blk.{i}.ffn_down.weight": sd[f"blocks.{i}.mlp.down.weight"],
            f"blk.{i}.attn_norm.weight": sd[f"blocks.{i}.ln_attn.weight"],
            f"blk.{i}.ffn_norm.weight": sd[f"blocks.{i}.ln_mlp.weight"],
        }
    return {name: t.detach().numpy().copy() for name, t in out.items()}
