"""`TransformerLM`: a decoder-only transformer covering the GPT-2, Llama, Qwen2 and Gemma families.

Hook sites (identity `HookPoint` modules), named as in `model.named_modules()`:
  hook_embed                      (B, T, C)  token (+ learned position) embedding, scaled if embed_scale
  blocks.{i}.hook_resid_pre       (B, T, C)  residual stream entering block i
  blocks.{i}.attn.hook_q          (B, H, T, D)  queries after RoPE
  blocks.{i}.attn.hook_k/hook_v   (B, K, T, D)  new keys (after RoPE) and values
  blocks.{i}.attn.hook_scores     (B, H, T, S)  masked, scaled scores (eager path)
  blocks.{i}.attn.hook_pattern    (B, H, T, S)  attention probabilities (eager path)
  blocks.{i}.attn.hook_z          (B, T, H*D)  heads concatenated, before the output projection
  blocks.{i}.hook_attn_out        (B, T, C)  attention branch output
  blocks.{i}.hook_resid_mid       (B, T, C)  residual after attention
  blocks.{i}.mlp.hook_hidden      (B, T, F)  MLP hidden activation
  blocks.{i}.hook_mlp_out         (B, T, C)  MLP branch output
  blocks.{i}.hook_resid_post      (B, T, C)  residual leaving block i
  hook_final                      (B, T, C)  after the final norm
  hook_logits                     (B, T, V)  logits
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import ConfigError
from .attention import IMPLS, Attention
from .cache import KVCache
from .config import ModelConfig
from .inputs import check_inputs, resolve_positions
from .layers import MLP, HookPoint, Rotary, init_weights, make_embedding, make_norm, make_position_embedding
from .placement import module_device, module_dtype

if TYPE_CHECKING:
    from ..io.report import LoadReport


class Block(nn.Module):
    """One transformer block; `norm_placement` decides where the norms sit, mlp="none" drops the MLP."""

    # Hook sites registered by name in __init__.
    hook_resid_pre: HookPoint
    hook_attn_out: HookPoint
    hook_resid_mid: HookPoint
    hook_mlp_out: HookPoint
    hook_resid_post: HookPoint

    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.pre = config.norm_placement == "pre"
        self.ln_attn = make_norm(config)
        self.attn = Attention(config, layer)
        has_mlp = config.mlp != "none"
        self.ln_mlp: nn.Module | None = make_norm(config) if has_mlp else None
        self.mlp: MLP | None = MLP(config) if has_mlp else None
        self.drop = nn.Dropout(config.dropout)
        for name in ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post"):
            setattr(self, f"hook_{name}", HookPoint())

    def forward(self, x: torch.Tensor, rope, mask, cache) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        x = self.hook_resid_pre(x)
        if self.pre:
            a = self.hook_attn_out(self.drop(self.attn(self.ln_attn(x), rope, mask, cache)))
            x = self.hook_resid_mid(x + a)
            if self.mlp is not None:
                assert self.ln_mlp is not None  # built together with the MLP
                x = x + self.hook_mlp_out(self.drop(self.mlp(self.ln_mlp(x))))
        else:
            a = self.hook_attn_out(self.drop(self.attn(x, rope, mask, cache)))
            x = self.hook_resid_mid(self.ln_attn(x + a))
            if self.mlp is not None:
                assert self.ln_mlp is not None  # built together with the MLP
                x = self.ln_mlp(x + self.hook_mlp_out(self.drop(self.mlp(x))))
        return self.hook_resid_post(x)


class TransformerLM(nn.Module):
    """Decoder-only language model. `forward` returns logits (B, T, V)."""

    # What `workbench.io` found when it loaded the weights (missing, unexpected, tied, cast); None otherwise.
    load_report: LoadReport | None = None

    def __init__(self, config: ModelConfig, *, init: bool = True) -> None:
        """init=False draws no initial weights of the workbench's or the embedding's (about 2 s of a 135M model
        on a CPU), for a loader that fills every parameter; built on the meta device (`torch.device("meta")`,
        as a strict load builds it), nothing is drawn or allocated at all."""
        super().__init__()
        self.config = config
        self.embed = make_embedding(config, init=init)
        self.pos_embed = make_position_embedding(config, init=init) if config.positions == "learned" else None
        self.rotary = Rotary(config) if config.positions == "rope" else None
        self.drop = nn.Dropout(config.dropout)
        self.hook_embed = HookPoint()
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.ln_f = make_norm(config)
        self.hook_final = HookPoint()
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.hook_logits = HookPoint()
        self.gradient_checkpointing = False
        if init:
            init_weights(self, config)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        *,
        validate: bool = True,
    ) -> torch.Tensor:
        """Logits (B, T, V) for `input_ids` (B, T).

        attention_mask: (B, T), or (B, L+T) with a cache of length L; 1 = token, 0 = padding.
        position_ids: (B, T); derived from the mask and the cache when omitted.
        validate: check ids, shapes and lengths (one host sync); generation turns it off for its
        own decode steps, whose ids the model itself produced.
        """
        if validate:
            attention_mask = check_inputs(
                self.config, input_ids, attention_mask, position_ids, cache, self.embed.weight.device
            )
        past = cache.length if cache is not None else 0
        T = input_ids.shape[1]
        if cache is not None:
            cache.check_room(T)
            full_mask = cache.write_mask(attention_mask, T)
        else:
            full_mask = attention_mask.bool() if attention_mask is not None else None
        positions = resolve_positions(position_ids, full_mask, past, input_ids)  # (B, T)
        mask = build_mask(full_mask, T, past, input_ids.device)  # (B, 1, T, S) bool, or None for plain causal
        logits = self.trunk(input_ids, positions, mask, cache)
        if cache is not None:
            cache.advance(T)
        return logits

    def trunk(self, input_ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None,
              cache: Any) -> torch.Tensor:
        """Logits (B, T, V): embedding, blocks, final norm and head, for positions and a mask already
        prepared. Every path runs this one body: prefill, cached decode, and the fixed-shape decode step
        (`workbench.model.fast`, also compiled or captured in a CUDA graph), which differ only in the
        positions (B, T), the mask (B, 1, T, S) (None = plain causal) and the cache they pass: a
        `KVCache`, `fast.StaticSlots`, or None.
        """
        x = self.embed(input_ids)  # (B, T, C)
        if self.pos_embed is not None:
            x = x + self.pos_embed(positions)
        x = self.drop(self.hook_embed(x))
        rope = self.rotary(positions, x.dtype) if self.rotary is not None else None
        for block in self.blocks:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled() and cache is None:
                x = checkpoint(block, x, rope, mask, cache, use_reentrant=False)
            else:
                x = block(x, rope, mask, cache)
        x = self.hook_final(self.ln_f(x))
        return self.hook_logits(self.lm_head(x))  # (B, T, V)

    # --- conveniences -------------------------------------------------------------------------
    def new_cache(self, batch_size: int, max_len: int | None = None, *, mode: str = "static") -> KVCache:
        """An empty KV cache on the model's device and dtype."""
        return KVCache(self.config, batch_size, max_len, mode=mode, device=module_device(self),
                       dtype=module_dtype(self))

    def set_attention_impl(self, impl: str) -> None:
        """Choose the attention path for every layer: "auto", "sdpa" or "eager" (see attention.py)."""
        if impl not in IMPLS:
            raise ConfigError(f"attention impl={impl!r} is unknown; use one of {IMPLS}.")
        for attn in self._attention_layers():
            attn.impl = impl

    @contextlib.contextmanager
    def attention_impl(self, impl: str) -> Iterator[None]:
        """Scoped `set_attention_impl`: the previous choice per layer is restored on exit."""
        before = [attn.impl for attn in self._attention_layers()]
        self.set_attention_impl(impl)
        try:
            yield
        finally:
            for attn, old in zip(self._attention_layers(), before):
                attn.impl = old

    def _attention_layers(self) -> list[Attention]:
        """The attention module of every block, in order."""
        return [cast(Block, block).attn for block in self.blocks]

    def num_parameters(self) -> int:
        """Parameters counted once each, so a tied embedding counts once."""
        return sum(p.numel() for p in self.parameters())


def build_mask(full_mask: torch.Tensor | None, T: int, past: int, device: torch.device) -> torch.Tensor | None:
    """Boolean attention mask (B, 1, T, S), True = may attend; None means plain causal or all-visible.

    Combines causality (key position <= query position) with key padding. A padded query row
    attends to itself only, so it stays finite instead of becoming NaN.
    """
    if full_mask is None:
        if past == 0 or T == 1:
            return None
        full_mask = torch.ones(1, past + T, dtype=torch.bool, device=device)
    S = full_mask.shape[1]
    q_pos = torch.arange(past, past + T, device=device)[:, None]  # (T, 1)
    k_pos = torch.arange(S, device=device)[None, :]  # (1, S)
    causal = k_pos <= q_pos  # (T, S)
    mask = causal[None] & full_mask[:, None, :]  # (B, T, S)
    mask = mask | (k_pos == q_pos)[None]
    return mask[:, None]  # (B, 1, T, S)
