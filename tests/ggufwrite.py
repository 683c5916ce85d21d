"""Test helpers for GGUF files: a workbench llama model's weights as llama.cpp names and lays them out, and a
writer of small files from metadata and raw tensors."""

from __future__ import annotations

from typing import Any

import gguf
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


def write_gguf(path: Any, tensors: dict[str, tuple[np.ndarray, Any]] | None = None,
               metadata: list[tuple[str, Any, Any, Any]] = (), *, endianess: Any = None) -> Any:
    """A GGUF file at `path` (architecture "llama"): each (key, value, type, item type) of `metadata`, then each
    tensor as (array, raw ggml type or None for the array's own dtype)."""
    w = gguf.GGUFWriter(str(path), "llama", endianess=endianess or gguf.GGUFEndian.LITTLE)
    for key, value, vtype, sub in metadata:
        w.add_key_value(key, value, vtype, sub)
    for name, (array, qtype) in (tensors or {}).items():
        w.add_tensor(name, array, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
