"""The gpt-fast-like port style: a Llama written the way gpt-fast writes one, loaded from HF Llama's weights.

`Transformer` has `tok_embeddings`, `layers[i].attention.wqkv` (q, k and v fused) and `.wo`,
`feed_forward.w1/w2/w3`, `attention_norm`, `ffn_norm`, `norm` and `output`; a preallocated KV cache
(`k_cache`/`v_cache` buffers written at `input_pos`) and a causal mask buffer sliced by `input_pos`, built in
the model's forward and passed into each attention. RoPE comes in three forms, one per variant:
- "complex": a complex `freqs_cis` (S, D/2) buffer rotating adjacent pairs, so the loader permutes HF's q/k rows
  into pairs (as gpt-fast's converter does);
- "cossin": `rope_cos`/`rope_sin` (S, D) buffers rotating the two halves of each head (HF's convention);
- "plain": tables computed in forward from a base kept as a plain number (`self.rope_base`), rotating pairs.
Besides gpt-fast's `forward(idx, input_pos)`, the forward takes what compare calls with: `input_ids`,
`attention_mask` (left padding), and `past_key_values`/`use_cache` in transformers' convention, mapped onto the
preallocated cache (the positions continue from the mask's length; the cache returned is the buffers).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import hfzoo
import torch
import torch.nn.functional as F
from catalogue import Mistake
from families.familymodels import randomize
from torch import nn

STYLE = "gpt-fast-like"
FORMS = ("complex", "cossin", "plain")
BUGS = ("rope_base", "rope_dim", "rope_partial", "no_permute", "mask_shift", "mask_transposed", "padding_ignored",
        "input_pos_restart", "norm_eps", "no_scale", "sdpa_is_causal", "rotate_pairs", "w13_swap", "kv_swap",
        "layers_swap", "norms_swap", "no_norm_weight")


@dataclass(frozen=True)
class ModelArgs:
    block_size: int  # positions the cache and the mask buffer hold
    vocab_size: int
    n_layer: int
    n_head: int  # H
    n_local_heads: int  # K: key/value heads
    dim: int  # C
    intermediate_size: int
    head_dim: int  # D
    rope_base: float
    norm_eps: float
    rope: str  # one of FORMS

    @classmethod
    def of(cls, hf: nn.Module, rope: str) -> ModelArgs:
        c = hf.config
        return cls(32, c.vocab_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads,
                   c.hidden_size, c.intermediate_size, c.hidden_size // c.num_attention_heads,
                   float(c.rope_parameters["rope_theta"]), c.rms_norm_eps, rope)


def frequencies(base: float, rotated: int, d: int) -> torch.Tensor:
    """(rotated/2,) base^(-2i/d): `rotated` dimensions of each head turn, at frequencies set by `d`."""
    return 1.0 / base ** (torch.arange(0, rotated, 2, dtype=torch.float32) / d)


def pairs_permute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """HF's q/k rows (heads*D, C), half-split per head, reordered into adjacent pairs: row 2j <- j, 2j+1 <- j+D/2."""
    rows, C = w.shape
    return w.view(heads, 2, rows // heads // 2, C).transpose(1, 2).reshape(rows, C)


def rotate_pairs(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    """x (B, T, H, D) with its first 2n dims turned as n complex pairs by freqs_cis (T, n)."""
    B, T, H, _ = x.shape
    rot = 2 * freqs_cis.shape[-1]
    xc = torch.view_as_complex(x[..., :rot].float().reshape(B, T, H, rot // 2, 2))  # (B, T, H, n)
    turned = torch.view_as_real(xc * freqs_cis[None, :, None]).flatten(3)  # (B, T, H, 2n)
    return torch.cat((turned.type_as(x), x[..., rot:]), dim=-1)


def rotate_adjacent(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, T, H, D) with its first r dims turned in adjacent pairs by the halves-layout cos, sin (T, r)."""
    rot = cos.shape[-1]
    c, s = cos[None, :, None, : rot // 2], sin[None, :, None, : rot // 2]  # (1, T, 1, r/2)
    x1, x2 = x[..., 0:rot:2], x[..., 1:rot:2]
    turned = torch.stack((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).flatten(-2)  # (B, T, H, r)
    return torch.cat((turned, x[..., rot:]), dim=-1)


def rotate_halves(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, T, H, D) with its first r dims turned in two halves by cos, sin (T, r)."""
    rot = cos.shape[-1]
    x1, x2 = x[..., : rot // 2], x[..., rot // 2: rot]
    turned = x[..., :rot] * cos[None, :, None] + torch.cat((-x2, x1), dim=-1) * sin[None, :, None]
    return torch.cat((turned, x[..., rot:]), dim=-1)


class KVCache(nn.Module):
    def __init__(self, batch: int, length: int, heads: int, head_dim: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.register_buffer("k_cache", torch.zeros(batch, heads, length, head_dim, dtype=dtype))
        self.register_buffer("v_cache", torch.zeros(batch, heads, length, head_dim, dtype=dtype))

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v (B, K, T, D) written at slots input_pos (T,); returns the whole cache (B, K, S, D) each."""
        self.k_cache[:, :, input_pos] = k
        self.v_cache[:, :, input_pos] = v
        return self.k_cache, self.v_cache


class RMSNorm(nn.Module):
    def __init__(self, weight: torch.Tensor, eps: float, affine: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(weight.detach().clone()) if affine else None  # no_norm_weight: no scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        y = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x)
        return y if self.weight is None else y * self.weight


class Attention(nn.Module):
    def __init__(self, a: ModelArgs, bug: str | None) -> None:
        super().__init__()
        H, K, D = a.n_head, a.n_local_heads, a.head_dim
        self.wqkv = nn.Linear(a.dim, (H + 2 * K) * D, bias=False)
        self.wo = nn.Linear(H * D, a.dim, bias=False)
        self.kv_cache: KVCache | None = None
        self.H, self.K, self.D, self.rope = H, K, D, a.rope
        self.pairs_bug = bug == "rotate_pairs"  # the mistake: the cos/sin form turning pairs, not halves
        self.scale = 1.0 if bug == "no_scale" else None
        self.is_causal = bug == "sdpa_is_causal"  # the mistake: SDPA's own causal flag, the mask left unused

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, ...], mask: torch.Tensor,
                input_pos: torch.Tensor) -> torch.Tensor:
        """x (B, T, C); rope: (freqs_cis,) (T, D/2) or (cos, sin) (T, D); mask (B or 1, 1, T, S) bool."""
        B, T, _ = x.shape
        H, K, D = self.H, self.K, self.D
        q, k, v = self.wqkv(x).split([H * D, K * D, K * D], dim=-1)
        q, k, v = q.view(B, T, H, D), k.view(B, T, K, D), v.view(B, T, K, D)
        turn = rotate_pairs if self.rope != "cossin" else rotate_adjacent if self.pairs_bug else rotate_halves
        q, k = turn(q, *rope), turn(k, *rope)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H or K, T, D)
        assert self.kv_cache is not None  # setup_caches runs before the first forward
        k, v = self.kv_cache.update(input_pos, k, v)  # (B, K, S, D)
        k, v = k.repeat_interleave(H // K, dim=1), v.repeat_interleave(H // K, dim=1)  # (B, H, S, D)
        if self.is_causal:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)  # (B, H, T, D)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)  # (B, H, T, D)
        return self.wo(y.transpose(1, 2).reshape(B, T, H * D))


class FeedForward(nn.Module):
    def __init__(self, a: ModelArgs) -> None:
        super().__init__()
        self.w1 = nn.Linear(a.dim, a.intermediate_size, bias=False)
        self.w3 = nn.Linear(a.dim, a.intermediate_size, bias=False)
        self.w2 = nn.Linear(a.intermediate_size, a.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, a: ModelArgs, bug: str | None) -> None:
        super().__init__()
        self.attention = Attention(a, bug)
        self.feed_forward = FeedForward(a)
        affine = bug != "no_norm_weight"
        self.attention_norm = RMSNorm(torch.ones(a.dim), 1e-5 if bug == "norm_eps" else a.norm_eps, affine)
        self.ffn_norm = RMSNorm(torch.ones(a.dim), a.norm_eps, affine)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, ...], mask: torch.Tensor,
                input_pos: torch.Tensor) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), rope, mask, input_pos)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    """The port; `bug` plants one mistake (None: a clean port)."""

    def __init__(self, a: ModelArgs, bug: str | None = None) -> None:
        super().__init__()
        assert bug is None or bug in BUGS, bug
        self.args, self.bug = a, bug
        self.tok_embeddings = nn.Embedding(a.vocab_size, a.dim)
        self.layers = nn.ModuleList(TransformerBlock(a, bug) for _ in range(a.n_layer))
        self.norm = RMSNorm(torch.ones(a.dim), a.norm_eps, bug != "no_norm_weight")
        self.output = nn.Linear(a.dim, a.vocab_size, bias=False)
        base = a.rope_base * 50 if bug == "rope_base" else a.rope_base
        rotated = a.head_dim // 2 if bug == "rope_partial" else a.head_dim
        d = a.dim if bug == "rope_dim" else rotated  # rope_dim: the exponent's d taken from the model width
        causal = torch.ones(a.block_size, a.block_size, dtype=torch.bool).tril(1 if bug == "mask_shift" else 0)
        self.register_buffer("causal_mask", causal.t() if bug == "mask_transposed" else causal)  # (S, S)
        angles = torch.outer(torch.arange(a.block_size, dtype=torch.float32), frequencies(base, rotated, d))
        if a.rope == "complex":
            self.register_buffer("freqs_cis", torch.polar(torch.ones_like(angles), angles))  # (S, D/2) complex
        elif a.rope == "cossin":
            angles = torch.cat((angles, angles), dim=-1)  # (S, D)
            self.register_buffer("rope_cos", angles.cos())
            self.register_buffer("rope_sin", angles.sin())
        else:
            self.rope_base, self.rope_d = base, d  # tables made in forward
        self.filled = 0  # positions the cache holds

    def setup_caches(self, batch: int) -> None:
        a = self.args
        for layer in self.layers:
            layer.attention.kv_cache = KVCache(batch, a.block_size, a.n_local_heads, a.head_dim,
                                               self.output.weight.dtype)

    def rotary(self, input_pos: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The rotary tables at input_pos (T,): (freqs_cis (T, D/2),) or (cos, sin) (T, D)."""
        if self.args.rope == "complex":
            return (self.freqs_cis[input_pos],)
        if self.args.rope == "cossin":
            return self.rope_cos[input_pos], self.rope_sin[input_pos]
        angles = torch.outer(input_pos.float(), frequencies(self.rope_base, self.args.head_dim, self.rope_d))
        return (torch.polar(torch.ones_like(angles), angles),)

    def mask(self, input_pos: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """(B or 1, 1, T, S) bool, True = may attend: the causal buffer's rows at input_pos, the padding keys
        (attention_mask (B, L+T)) removed; a padding query, left with no key, attends everywhere."""
        mask = self.causal_mask[None, None, input_pos]  # (1, 1, T, S)
        if attention_mask is None or self.bug == "padding_ignored":
            return mask
        B, S = attention_mask.shape[0], self.args.block_size
        keys = torch.ones(B, S, dtype=torch.bool, device=mask.device)
        keys[:, : attention_mask.shape[1]] = attention_mask.bool()
        mask = mask & keys[:, None, None, :]  # (B, 1, T, S)
        return mask | ~mask.any(-1, keepdim=True)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                past_key_values: tuple | None = None, use_cache: bool = False,
                input_pos: torch.Tensor | None = None) -> torch.Tensor | dict:
        """Logits (B, T, V); with use_cache, {"logits", "past_key_values"}. attention_mask covers (B, L+T)."""
        B, T = input_ids.shape
        cache = self.layers[0].attention.kv_cache
        if past_key_values is None and (cache is None or cache.k_cache.shape[0] != B):
            self.setup_caches(B)
        if input_pos is None:
            L = 0 if past_key_values is None else (
                attention_mask.shape[1] - T if attention_mask is not None else self.filled)
            if self.bug == "input_pos_restart":  # the mistake: each call counts from 0, cache or not
                L = 0
            input_pos = torch.arange(L, L + T, device=input_ids.device)  # (T,)
        self.filled = int(input_pos[-1]) + 1
        rope, mask = self.rotary(input_pos), self.mask(input_pos, attention_mask)
        x = self.tok_embeddings(input_ids)
        for layer in self.layers:
            x = layer(x, rope, mask, input_pos)
        logits = self.output(self.norm(x))
        if not use_cache:
            return logits
        kv = tuple((layer.attention.kv_cache.k_cache, layer.attention.kv_cache.v_cache) for layer in self.layers)
        return {"logits": logits, "past_key_values": kv}


def load(hf: nn.Module, rope: str, bug: str | None) -> Transformer:
    """HF Llama's weights in the port, as gpt-fast's converter lays them out: q, k and v fused, and for the
    pair-rotating forms q/k rows permuted into pairs (no_permute: left as HF's halves)."""
    a = ModelArgs.of(hf, rope)
    model = Transformer(a, bug).eval()
    sd, p = hf.state_dict(), "model.layers.{}."
    pairs = rope != "cossin" and bug != "no_permute"
    with torch.no_grad():
        model.tok_embeddings.weight.copy_(sd["model.embed_tokens.weight"])
        model.output.weight.copy_(sd["lm_head.weight"])
        if model.norm.weight is not None:
            model.norm.weight.copy_(sd["model.norm.weight"])
        for i, layer in enumerate(model.layers):
            src = p.format(a.n_layer - 1 - i if bug == "layers_swap" else i)  # layers_swap: the other layer's
            w = {n: sd[src + n] for n in ("self_attn.q_proj.weight", "self_attn.k_proj.weight",
                                          "self_attn.v_proj.weight")}
            q, k, v = w.values()
            if pairs:
                q, k = pairs_permute(q, a.n_head), pairs_permute(k, a.n_local_heads)
            layer.attention.wqkv.weight.copy_(torch.cat((q, v, k) if bug == "kv_swap" else (q, k, v)))
            layer.attention.wo.weight.copy_(sd[src + "self_attn.o_proj.weight"])
            mlp = (("w1", "up_proj"), ("w3", "gate_proj")) if bug == "w13_swap" else (("w1", "gate_proj"),
                                                                                       ("w3", "up_proj"))
            for mine, theirs in (*mlp, ("w2", "down_proj")):
                getattr(layer.feed_forward, mine).weight.copy_(sd[src + f"mlp.{theirs}.weight"])
            norms = ("post_attention_layernorm", "input_layernorm") if bug == "norms_swap" else (
                "input_layernorm", "post_attention_layernorm")
            for norm, theirs in zip((layer.attention_norm, layer.ffn_norm), norms):
                if norm.weight is not None:
                    norm.weight.copy_(sd[src + theirs + ".weight"])
    return model  # float32, as the reference (`.to(dtype)` would cast the complex freqs_cis to real)


@functools.cache
def reference() -> nn.Module:
    """HF Llama (2 layers, C=32, H=4, K=2, D=8) with random norm weights."""
    return randomize(hfzoo.build("llama"), (0.5, 1.5))




def _port(form: str):  # noqa: ANN202
    return lambda hf, bug: load(hf, form, bug)


def _entry(form: str, bug: str, what: str, point: str, fix: str, case: str | None = None) -> Mistake:
    return Mistake(f"{STYLE} ({form})" if form != "complex" else STYLE, bug, what, point, fix, reference,
                   _port(form), case)


ATTN = "block 0 attention"
MISTAKES: tuple[Mistake, ...] = (
    _entry("complex", "rope_base", "RoPE base wrong (complex freqs_cis)", ATTN, "RoPE base 10000"),
    _entry("cossin", "rope_base", "RoPE base wrong (cos/sin buffers)", ATTN, "RoPE base 10000"),
    _entry("plain", "rope_base", "RoPE base wrong (plain-number base)", ATTN, "RoPE base 10000"),
    _entry("complex", "rope_dim", "RoPE tables built for the model width, not the head dim", ATTN,
           "RoPE dimension 8"),
    _entry("complex", "rope_partial", "RoPE over half the head (partial-rotary fraction)", ATTN,
           "RoPE rotary dims 8"),
    _entry("complex", "no_permute", "q/k not permuted on load (pairs rotated where halves should be)", ATTN,
           "RoPE: half-split"),
    _entry("plain", "no_permute", "q/k not permuted on load (plain-number base form)", ATTN, "RoPE: half-split"),
    _entry("cossin", "rotate_pairs", "adjacent pairs rotated where the reference rotates halves",
           ATTN, "RoPE: half-split"),
    _entry("complex", "mask_shift", "causal mask shifted by one", ATTN, "attention mask: causal"),
    _entry("complex", "mask_transposed", "causal mask transposed", ATTN, "attention mask: causal"),
    _entry("complex", "padding_ignored", "padding ignored", ATTN,
           "attention mask: causal + padding", "padded"),
    _entry("cossin", "padding_ignored", "padding ignored", ATTN,
           "attention mask: causal + padding", "padded"),
    _entry("complex", "input_pos_restart", "input_pos restarts at 0 inside the cache", ATTN,
           "input_pos continues from the cache", "cached"),
    _entry("complex", "sdpa_is_causal", "mask passed in but unused: SDPA's is_causal over the whole cache", ATTN,
           "SDPA mask: causal + padding by position", "padded"),
    _entry("complex", "norm_eps", "norm epsilon 1e-5 for 1e-6", "block 0 attention norm",
           "norm eps 1e-05 -> 1e-06"),
    _entry("complex", "no_scale", "attention scale 1/sqrt(D) missing", ATTN, "scale x 1/sqrt(D)"),
    _entry("complex", "w13_swap", "gate and up weights swapped", "block 0 mlp", "weights: swap back"),
    _entry("complex", "kv_swap", "k and v weights swapped", ATTN, "weights: swap back"),
    _entry("complex", "layers_swap", "layers 0 and 1 swapped", "block 0 attention norm", "weights: swap back"),
    _entry("complex", "norms_swap", "attention norm and MLP norm swapped", "block 0 attention norm",
           "weights: swap back"),
    _entry("complex", "no_norm_weight", "norm weight left out (no affine)", "block 0 attention norm",
           "add missing norm weight"),
    _entry("plain", "rope_dim", "RoPE tables built for the model width, not the head dim (plain-number base)", ATTN,
           "RoPE dimension 8"),
)
