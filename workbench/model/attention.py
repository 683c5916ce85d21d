"""Causal self-attention with a fused QKV projection, an SDPA path and an eager path.

The one switch between the paths lives here: `Attention.impl`.
- "sdpa" always uses `F.scaled_dot_product_attention` (flash kernels on GPU).
- "eager" always materialises scores and probabilities, firing `hook_scores` and `hook_pattern`.
- "auto" (the default) uses SDPA unless a hook listens on `hook_scores` or `hook_pattern`,
  so probabilities are computed only when somebody wants them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .cache import KVCache
from .config import ModelConfig
from .layers import HookPoint, apply_rotary

IMPLS = ("auto", "sdpa", "eager")


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.n_heads, self.n_kv, self.head_dim = config.n_heads, config.kv_heads, config.head_dim
        self.scale = self.head_dim**-0.5
        self.dropout = config.dropout
        self.impl = "auto"
        qkv_width = (self.n_heads + 2 * self.n_kv) * self.head_dim
        self.qkv = nn.Linear(config.d_model, qkv_width, bias=config.qkv_bias)  # [q; k; v] rows
        self.out = nn.Linear(self.n_heads * self.head_dim, config.d_model, bias=config.out_bias)
        self.hook_q = HookPoint()  # (B, H, T, D), after RoPE
        self.hook_k = HookPoint()  # (B, K, T, D), after RoPE, new positions only
        self.hook_v = HookPoint()  # (B, K, T, D), new positions only
        self.hook_scores = HookPoint()  # (B, H, T, S) scaled and masked, eager path only
        self.hook_pattern = HookPoint()  # (B, H, T, S) softmax probabilities, eager path only
        self.hook_z = HookPoint()  # (B, T, H*D) heads concatenated, before the output projection

    @property
    def uses_eager(self) -> bool:
        if self.impl == "auto":
            return self.hook_pattern.is_hooked or self.hook_scores.is_hooked
        return self.impl == "eager"

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        mask: torch.Tensor | None,
        cache: KVCache | None,
    ) -> torch.Tensor:
        B, T, C = x.shape
        H, K, D = self.n_heads, self.n_kv, self.head_dim
        q, k, v = self.qkv(x).split((H * D, K * D, K * D), dim=-1)
        q = q.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, K, D).transpose(1, 2)  # (B, K, T, D)
        v = v.view(B, T, K, D).transpose(1, 2)  # (B, K, T, D)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)  # (B, K, S, D)
        causal = mask is None and k.shape[2] == T  # no padding and no cache: plain causal
        p = self.dropout if self.training else 0.0
        if self.uses_eager:
            y = self._eager(q, k, v, mask, causal, p)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal, enable_gqa=K != H
            )  # (B, H, T, D)
        y = self.hook_z(y.transpose(1, 2).reshape(B, T, H * D))  # (B, T, H*D); H*D = C unless attn_head_dim
        return self.out(y)

    def _eager(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None,
        causal: bool,
        p: float,
    ) -> torch.Tensor:
        groups = self.n_heads // self.n_kv
        if groups > 1:
            k = k.repeat_interleave(groups, dim=1)  # (B, H, S, D)
            v = v.repeat_interleave(groups, dim=1)
        scores = (q @ k.transpose(-2, -1)) * self.scale  # (B, H, T, S)
        if causal:
            T, S = scores.shape[-2:]
            mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        scores = self.hook_scores(scores)
        probs = self.hook_pattern(torch.softmax(scores.float(), dim=-1).to(q.dtype))  # (B, H, T, S)
        return F.dropout(probs, p=p, training=p > 0) @ v  # (B, H, T, D)
