"""MiniGPT: a small, correct, hand-written GPT of the kind people write themselves (nanoGPT style).

It is the clean base of the bug zoo: learned positions, pre-norm LayerNorm, causal + key-padding mask,
an HF-style legacy cache (a tuple of (k, v) per layer, returned as `.past_key_values`), explicit input
validation, optional tied head. Each zoo model in `zoo.py` overrides one small method with one bug.
Shapes: B batch, T new tokens, S keys (cached + new), C channels, H heads, D head dim, V vocab.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class MiniConfig:  # deliberately not validated: the doctor's config check must catch bad values
    vocab_size: int = 96
    d_model: int = 32
    n_heads: int = 4
    n_layers: int = 2
    max_seq_len: int = 32
    dropout: float = 0.1
    tie_embeddings: bool = True
    init_std: float = 0.02


@dataclass
class LMOutput:
    logits: torch.Tensor  # (B, T, V)
    past_key_values: tuple | None = None  # ((k, v) per layer), k/v (B, H, S, D)


class Attention(nn.Module):
    def __init__(self, cfg: MiniConfig) -> None:
        super().__init__()
        self.H, self.D = cfg.n_heads, cfg.d_model // cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * self.H * self.D)
        self.proj = nn.Linear(self.H * self.D, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def scores(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, T, S)

    def allowed(self, T: int, S: int, key_mask: torch.Tensor | None) -> torch.Tensor:
        """(B|1, 1, T, S) True where a query may attend: causal, real keys, and always itself."""
        past = S - T
        causal = torch.ones(T, S, dtype=torch.bool, device=self.qkv.weight.device).tril(past)  # (T, S)
        own = torch.arange(S, device=causal.device)[None, :] == torch.arange(past, S, device=causal.device)[:, None]
        if key_mask is None:
            return causal[None, None]
        return ((causal[None] & key_mask[:, None, :]) | own[None])[:, None]

    def combine(self, att: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.drop(att) @ v  # (B, H, T, D)

    def forward(self, x, key_mask=None, past=None):  # noqa: ANN001
        B, T, _ = x.shape
        q, k, v = self.qkv(x).split(self.H * self.D, dim=-1)
        q, k, v = (t.view(B, T, self.H, self.D).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        if past is not None:
            k, v = self.extend(past, k, v)
        att = self.scores(q, k).masked_fill(~self.allowed(T, k.shape[2], key_mask), float("-inf"))
        y = self.combine(torch.softmax(att, dim=-1), v)
        return self.proj(y.transpose(1, 2).reshape(B, T, self.H * self.D)), (k, v)  # (B, T, C)

    def extend(self, past, k, v):  # noqa: ANN001
        return torch.cat((past[0], k), dim=2), torch.cat((past[1], v), dim=2)  # (B, H, S, D)


class MLP(nn.Module):
    def __init__(self, cfg: MiniConfig) -> None:
        super().__init__()
        self.fc, self.out = nn.Linear(cfg.d_model, 4 * cfg.d_model), nn.Linear(4 * cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.gelu(self.fc(x)))


class Block(nn.Module):
    def __init__(self, cfg: MiniConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.ln1, self.ln2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.attn, self.mlp = Attention(cfg), MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, key_mask=None, past=None):  # noqa: ANN001
        a, kv = self.attn(self.ln1(x), key_mask, past)
        x = x + self.drop(a)
        return x + self.drop(self.mlp(self.ln2(x))), kv


class MiniGPT(nn.Module):
    def __init__(self, cfg: MiniConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = cfg or MiniConfig()
        self.wte, self.wpe = nn.Embedding(cfg.vocab_size, cfg.d_model), nn.Embedding(cfg.max_seq_len, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(self.make_block(cfg, i) for i in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.init_weights()
        self.tie()

    def make_block(self, cfg: MiniConfig, layer: int) -> nn.Module:
        return Block(cfg, layer)

    def init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, self.config.init_std)

    def tie(self) -> None:
        if self.config.tie_embeddings:
            self.head.weight = self.wte.weight

    def check(self, ids: torch.Tensor, past_len: int) -> torch.Tensor:
        if bool(((ids < 0) | (ids >= self.config.vocab_size)).any()):
            raise ValueError(f"token ids must lie in [0, {self.config.vocab_size}).")
        if past_len + ids.shape[1] > self.config.max_seq_len:
            raise ValueError(f"sequence longer than max_seq_len={self.config.max_seq_len}.")
        return ids

    def positions(self, position_ids, mask, past_len: int, T: int) -> torch.Tensor:  # noqa: ANN001
        if position_ids is not None:
            return position_ids
        if mask is not None:
            return (mask.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]  # (B, T) counted over real tokens
        return torch.arange(past_len, past_len + T, device=self.wte.weight.device)[None]

    def embed(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return self.wte(ids) + self.wpe(pos)  # (B, T, C)

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=False):  # noqa: ANN001
        past_len = past_key_values[0][0].shape[2] if past_key_values else 0
        ids = self.check(input_ids, past_len)
        pos = self.positions(position_ids, attention_mask, past_len, ids.shape[1])
        x = self.drop(self.embed(ids, pos))
        key_mask = attention_mask.bool() if attention_mask is not None else None  # (B, S)
        presents = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, key_mask, past_key_values[i] if past_key_values else None)
            presents.append(kv)
        logits = self.head(self.ln_f(x))  # (B, T, V)
        return LMOutput(logits, tuple(presents) if use_cache else None)


class BareLM(nn.Module):
    """The smallest contract: forward(input_ids, attention_mask=None) -> logits tensor; no cache, no position_ids."""

    def __init__(self, vocab_size: int = 64, d_model: int = 32, max_seq_len: int = 32) -> None:
        super().__init__()
        cfg = MiniConfig(vocab_size=vocab_size, d_model=d_model, max_seq_len=max_seq_len, dropout=0.0)
        self.inner = MiniGPT(cfg)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.inner(input_ids, attention_mask).logits
