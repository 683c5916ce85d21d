"""The bug zoo: deliberately broken models, one classic implementation mistake each, used only by tests.

Every bug sits on one line marked `# BUG:`. Most are MiniGPT subclasses overriding one small method;
the generation bugs are workbench `TransformerLM` subclasses, because generation needs its cache
contract. `ZOO` maps a name to (builder, the doctor checks expected to flag it, why any extra ones fire).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from workbench import KVCache, ModelConfig, TransformerLM

from .minigpt import Attention, Block, MiniConfig, MiniGPT


def _seeded(build):  # noqa: ANN001, ANN202
    def make():  # noqa: ANN202
        torch.manual_seed(0)
        return build().eval()

    return make


# --- 1 config ------------------------------------------------------------------------------------
def bad_heads() -> MiniGPT:
    return MiniGPT(MiniConfig(n_heads=5))  # BUG: 32 channels over 5 heads: head_dim floors to 6, 2 channels unused


# --- 2 causal leakage ----------------------------------------------------------------------------
class ShiftedMaskAttention(Attention):
    def allowed(self, T, S, key_mask):  # noqa: ANN001, ANN201
        causal = torch.ones(T, S, dtype=torch.bool).tril(S - T + 1)  # BUG: diagonal +1: each query sees the next token
        return causal[None, None] if key_mask is None else (causal[None] & key_mask[:, None, :])[:, None]


class ShiftedMaskBlock(Block):
    def __init__(self, cfg: MiniConfig, layer: int) -> None:
        super().__init__(cfg, layer)
        self.attn = ShiftedMaskAttention(cfg)


class ShiftedMaskGPT(MiniGPT):
    def make_block(self, cfg, layer):  # noqa: ANN001, ANN201
        return ShiftedMaskBlock(cfg, layer)


# --- 3 padding mask ------------------------------------------------------------------------------
class IgnoresPaddingGPT(MiniGPT):
    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=False):  # noqa: ANN001, ANN201
        past_len = past_key_values[0][0].shape[2] if past_key_values else 0
        pos = self.positions(position_ids, attention_mask, past_len, input_ids.shape[1])
        return super().forward(input_ids, None, pos, past_key_values, use_cache)  # BUG: the padding mask is dropped


# --- 4 positions ---------------------------------------------------------------------------------
class NoPositionsGPT(MiniGPT):
    def embed(self, ids, pos):  # noqa: ANN001, ANN201
        return self.wte(ids)  # BUG: the position embedding is never added


class CacheRestartsPositionsGPT(MiniGPT):
    def positions(self, position_ids, mask, past_len, T):  # noqa: ANN001, ANN201
        if position_ids is not None:
            return position_ids
        return torch.arange(T)[None]  # BUG: ignores past_len, so cached steps restart at position 0


# --- 5 KV cache ----------------------------------------------------------------------------------
class DropsKeyAttention(Attention):
    def extend(self, past, k, v):  # noqa: ANN001, ANN201
        return torch.cat((past[0][:, :, 1:], k), 2), torch.cat((past[1][:, :, 1:], v), 2)  # BUG: drops a key


class DropsKeyBlock(Block):
    def __init__(self, cfg: MiniConfig, layer: int) -> None:
        super().__init__(cfg, layer)
        self.attn = DropsKeyAttention(cfg)


class CacheOrderGPT(MiniGPT):
    def make_block(self, cfg, layer):  # noqa: ANN001, ANN201
        return DropsKeyBlock(cfg, layer)


# --- 6 norm placement ----------------------------------------------------------------------------
class PostNormBlock(Block):
    def forward(self, x, key_mask=None, past=None):  # noqa: ANN001, ANN201
        a, kv = self.attn(x, key_mask, past)
        x = self.ln1(x + a)
        return self.ln2(x + self.mlp(x)), kv


class MixedNormGPT(MiniGPT):
    def make_block(self, cfg, layer):  # noqa: ANN001, ANN201
        return PostNormBlock(cfg, layer) if layer == 1 else Block(cfg, layer)  # BUG: block 1 post-norm, 0 pre-norm


# --- 7 score overflow ----------------------------------------------------------------------------
class NoScaleAttention(Attention):
    def scores(self, q, k):  # noqa: ANN001, ANN201
        return q @ k.transpose(-2, -1)  # BUG: missing / sqrt(head_dim)


class NoScaleBlock(Block):
    def __init__(self, cfg: MiniConfig, layer: int) -> None:
        super().__init__(cfg, layer)
        self.attn = NoScaleAttention(cfg)


class NoScaleGPT(MiniGPT):
    def make_block(self, cfg, layer):  # noqa: ANN001, ANN201
        return NoScaleBlock(cfg, layer)


WIDE = MiniConfig(d_model=256, n_heads=2, init_std=0.02)  # head_dim 128: the missing scale costs 11x


def scaled_wide() -> MiniGPT:
    """The correctly scaled twin of `no_scale`, same weights scheme: must pass score_overflow."""
    return MiniGPT(WIDE)


# --- 8 NaN -------------------------------------------------------------------------------------------
class LogMLPBlock(Block):
    def forward(self, x, key_mask=None, past=None):  # noqa: ANN001, ANN201
        a, kv = self.attn(self.ln1(x), key_mask, past)
        x = x + a
        return x + torch.log(self.mlp(self.ln2(x))), kv  # BUG: log of a signed activation gives NaN


class NaNLayerGPT(MiniGPT):
    def make_block(self, cfg, layer):  # noqa: ANN001, ANN201
        return LogMLPBlock(cfg, layer) if layer == 1 else Block(cfg, layer)


# --- 9 gradients ---------------------------------------------------------------------------------
class DetachingBlock(Block):
    def forward(self, x, key_mask=None, past=None):  # noqa: ANN001, ANN201
        return super().forward(x.detach(), key_mask, past)  # BUG: cuts the graph: earlier layers get no gradient


class DetachedGPT(MiniGPT):
    def make_block(self, cfg, layer):  # noqa: ANN001, ANN201
        return DetachingBlock(cfg, layer) if layer == 1 else Block(cfg, layer)


# --- 10 init scale -------------------------------------------------------------------------------
class ExplodingInitGPT(MiniGPT):
    def init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 1.0)  # BUG: N(0, 1) for a Linear: std x sqrt(fan_in) = 5.7 at C = 32


# --- 11 determinism ------------------------------------------------------------------------------
class EvalDropoutAttention(Attention):
    def combine(self, att, v):  # noqa: ANN001, ANN201
        return F.dropout(att, p=0.1) @ v  # BUG: F.dropout defaults to training=True, active in eval too


class EvalDropoutBlock(Block):
    def __init__(self, cfg: MiniConfig, layer: int) -> None:
        super().__init__(cfg, layer)
        self.attn = EvalDropoutAttention(cfg)


class EvalDropoutGPT(MiniGPT):
    def make_block(self, cfg, layer):  # noqa: ANN001, ANN201
        return EvalDropoutBlock(cfg, layer)


# --- 12 weights ----------------------------------------------------------------------------------
class CopiedEmbeddingGPT(MiniGPT):
    def tie(self) -> None:
        self.head.weight = nn.Parameter(self.wte.weight.detach().clone())  # BUG: a copy, not the shared Parameter


# --- 13 generation memory ------------------------------------------------------------------------
class LeakyCacheLM(TransformerLM):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.history: list[KVCache] = []

    def new_cache(self, batch_size, max_len=None, *, mode="static"):  # noqa: ANN001, ANN201
        cache = super().new_cache(batch_size, max_len, mode=mode)
        self.history.append(cache)  # BUG: every cache stays referenced after generate returns
        return cache


# --- 14 beam search ------------------------------------------------------------------------------
class SortedReorderCache(KVCache):
    def reorder(self, index: torch.Tensor) -> None:
        super().reorder(index.sort().values)  # BUG: rows sorted instead of following the surviving beams


class SortedReorderLM(TransformerLM):
    def new_cache(self, batch_size, max_len=None, *, mode="static"):  # noqa: ANN001, ANN201
        return SortedReorderCache(self.config, batch_size, max_len, mode=mode)


# --- 15 input validation -------------------------------------------------------------------------
class ClampingGPT(MiniGPT):
    def check(self, ids, past_len):  # noqa: ANN001, ANN201
        return ids.clamp(0, self.config.vocab_size - 1)  # BUG: bad ids silently become valid ones; no length check


# --- 16 batch invariance -------------------------------------------------------------------------
class CrossBatchNorm(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(dim)), nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(0, -1), keepdim=True)  # BUG: statistics over batch and channels, not channels only
        var = ((x - mean) ** 2).mean(dim=(0, -1), keepdim=True)
        return (x - mean) / torch.sqrt(var + 1e-5) * self.weight + self.bias


class CrossBatchBlock(Block):
    def __init__(self, cfg: MiniConfig, layer: int) -> None:
        super().__init__(cfg, layer)
        self.ln1 = CrossBatchNorm(cfg.d_model)


class CrossBatchGPT(MiniGPT):
    def make_block(self, cfg, layer):  # noqa: ANN001, ANN201
        return CrossBatchBlock(cfg, layer)


# --- 17 host-device traffic ----------------------------------------------------------------------
class ChattyAttention(Attention):
    def combine(self, att, v):  # noqa: ANN001, ANN201
        self.last_attention = att.detach().cpu()  # BUG: copies the attention map to the host in every layer
        self.peak = att.max().item()  # BUG: a host sync per layer
        return super().combine(att, v)


class ChattyBlock(Block):
    def __init__(self, cfg: MiniConfig, layer: int) -> None:
        super().__init__(cfg, layer)
        self.attn = ChattyAttention(cfg)


class ChattyGPT(MiniGPT):
    def make_block(self, cfg, layer):  # noqa: ANN001, ANN201
        return ChattyBlock(cfg, layer)


def _tiny(cls):  # noqa: ANN001, ANN202
    return lambda: cls(ModelConfig.preset("tiny"))


NO_WPE_GRAD = {"gradients": "the unused position embedding gets no gradient (a warning naming wpe.weight)"}

ZOO = {
    # name: (builder, checks expected to flag it (fail or warn), {collateral check: why it also fires})
    "bad_heads": (_seeded(bad_heads), {"config"}, {}),
    "shifted_mask": (_seeded(ShiftedMaskGPT), {"causal_leak"},
                     {"kv_cache": "in a full recompute the last prompt position sees the next token; a cache cannot"}),
    "ignores_padding": (_seeded(IgnoresPaddingGPT), {"padding_mask"}, {}),
    "no_positions": (_seeded(NoPositionsGPT), {"positions"}, NO_WPE_GRAD),
    "cache_restarts_positions": (_seeded(CacheRestartsPositionsGPT), {"positions"}, {}),
    "cache_order": (_seeded(CacheOrderGPT), {"kv_cache"}, {}),
    "mixed_norm": (_seeded(MixedNormGPT), {"norm_placement"}, {}),
    "no_scale": (_seeded(lambda: NoScaleGPT(WIDE)), {"score_overflow"}, {}),
    "nan_layer": (_seeded(NaNLayerGPT), {"nonfinite"}, {}),
    "detached": (_seeded(DetachedGPT), {"gradients"}, {}),
    "exploding_init": (_seeded(ExplodingInitGPT), {"init_scale"}, {}),
    "eval_dropout": (_seeded(EvalDropoutGPT), {"determinism"}, {}),
    "copied_embedding": (_seeded(CopiedEmbeddingGPT), {"weights"}, {}),
    "leaky_cache": (_seeded(_tiny(LeakyCacheLM)), {"generation_memory"}, {}),
    "sorted_reorder": (_seeded(_tiny(SortedReorderLM)), {"beam_search"}, {}),
    "clamping": (_seeded(ClampingGPT), {"input_validation"}, {}),
    "cross_batch": (_seeded(CrossBatchGPT), {"batch_invariance"}, {}),
    "chatty": (_seeded(ChattyGPT), {"host_device"}, {}),
}
