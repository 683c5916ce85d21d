"""The HF-like port style of the catalogue: separate q/k/v/o Linear modules, a gate/up/down MLP, RMSNorm modules
and SDPA, as people write a Llama or Qwen2 by hand; one `bug` switch per planted mistake (None: the clean port).

The port reads the HF state dict into its own names (`attention.q_proj`, `feed_forward.gate_proj`,
`attention_norm`, `ffn_norm`, ...), so the weight table pairs tensors across naming schemes by role. References
are tiny HF models with random norms and biases (`randomize`), built once.
"""

from __future__ import annotations

import functools
import warnings

import hfzoo
import torch
import torch.nn.functional as F
from catalogue import Mistake
from families.familymodels import qwen2, randomize
from torch import nn

KV = tuple[torch.Tensor, torch.Tensor]  # one layer's cached keys and values, (B, K, S, D) each
STYLE = "HF-like"
BUGS = ("kv_swap", "qk_swap", "gate_up_swap", "layers_swap", "norms_swap", "no_qkv_bias", "extra_bias",
        "mask_shift", "no_scale", "eps", "rope_base", "padding", "interleaved")


@functools.cache
def llama() -> nn.Module:
    """HF Llama, 2 layers, hidden 32, 4 heads of 8 sharing 2 key/value heads (GQA), random norms."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return randomize(hfzoo.build("llama"), (0.5, 1.5))


@functools.cache
def llama_mha() -> nn.Module:
    """HF Llama with as many key/value heads as query heads (q and k then have one shape, so they can be swapped)."""
    import transformers

    _, _, sizes = hfzoo.SPECS["llama"]
    config = transformers.LlamaConfig(**hfzoo.COMMON, **{**sizes, "num_key_value_heads": 4})
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return randomize(transformers.LlamaForCausalLM(config).eval(), (0.5, 1.5))


@functools.cache
def qwen() -> nn.Module:
    """HF Qwen2, 2 layers, hidden 64, q/k/v biases (random), RoPE base 5000."""
    import transformers

    return qwen2(transformers)


class RMSNorm(nn.Module):
    def __init__(self, weight: torch.Tensor, eps: float) -> None:
        super().__init__()
        self.weight, self.eps = nn.Parameter(weight.detach().clone()), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        out.weight.copy_(weight)
        if bias is not None:
            out.bias.copy_(bias)
    return out


class Loader:
    """The HF state dict read under the port's mistakes: which tensor goes where."""

    SWAPS = {"kv_swap": ("self_attn.k_proj", "self_attn.v_proj"), "qk_swap": ("self_attn.q_proj", "self_attn.k_proj"),
             "gate_up_swap": ("mlp.gate_proj", "mlp.up_proj"),
             "norms_swap": ("input_layernorm", "post_attention_layernorm")}

    def __init__(self, hf: nn.Module, bug: str | None) -> None:
        self.sd, self.bug = hf.state_dict(), bug

    def get(self, layer: int, name: str) -> torch.Tensor | None:
        """`model.layers.{layer}.{name}` as this port loads it (None when the reference has no such tensor)."""
        if self.bug == "layers_swap" and layer in (0, 1):
            layer = 1 - layer
        a, b = self.SWAPS.get(self.bug or "", ("", ""))
        for x, y in ((a, b), (b, a)):
            if x and name.startswith(x + "."):
                name = y + name[len(x):]
                break
        return self.sd.get(f"model.layers.{layer}.{name}")


class Attention(nn.Module):
    def __init__(self, load: Loader, i: int, cfg, bug: str | None) -> None:
        super().__init__()
        self.H, self.K = cfg.num_attention_heads, cfg.num_key_value_heads
        self.D = cfg.hidden_size // self.H
        self.bug = bug
        keep_bias = bug != "no_qkv_bias"
        for n in ("q_proj", "k_proj", "v_proj"):
            bias = load.get(i, f"self_attn.{n}.bias")
            setattr(self, n, _linear(load.get(i, f"self_attn.{n}.weight"), bias if keep_bias else None))
        extra = torch.randn(cfg.hidden_size, generator=torch.Generator().manual_seed(5)) * 0.3
        self.o_proj = _linear(load.get(i, "self_attn.o_proj.weight"), extra if bug == "extra_bias" else None)

    def rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x (B, H, T, D) rotated; cos/sin (B, 1, T, D) hold each frequency twice (halves)."""
        if self.bug == "interleaved":  # rotates (x0, x1), (x2, x3), ... with the half-split tables
            x1, x2 = x[..., 0::2], x[..., 1::2]  # (B, H, T, D/2) each
            c, s = cos[..., : self.D // 2], sin[..., : self.D // 2]
            return torch.stack((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).flatten(-2)
        x1, x2 = x.chunk(2, dim=-1)  # (B, H, T, D/2) each
        return x * cos + torch.cat((-x2, x1), dim=-1) * sin

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pad: torch.Tensor | None,
                past: KV | None) -> tuple[torch.Tensor, KV]:
        """x (B, T, C) over the cached (B, K, L, D) keys/values and its own; pad (B, L+T) 1 = token."""
        B, T, C = x.shape
        q = self.q_proj(x).view(B, T, self.H, self.D).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, self.K, self.D).transpose(1, 2)  # (B, K, T, D)
        v = self.v_proj(x).view(B, T, self.K, self.D).transpose(1, 2)  # (B, K, T, D)
        q, k = self.rope(q, cos, sin), self.rope(k, cos, sin)
        if past is not None:
            k, v = torch.cat((past[0], k), dim=2), torch.cat((past[1], v), dim=2)  # (B, K, S, D)
        S = k.shape[2]
        mask = torch.ones(T, S, dtype=torch.bool).tril(S - T + (1 if self.bug == "mask_shift" else 0))  # (T, S)
        if pad is not None and self.bug != "padding":
            mask = mask & pad.bool()[:, None, None, :]  # (B, 1, T, S)
            mask = mask | ~mask.any(-1, keepdim=True)  # a padding query attends to itself
        scale = 1.0 if self.bug == "no_scale" else None
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=True)  # (B, H, T, D)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, C)), (k, v)


class FeedForward(nn.Module):
    def __init__(self, load: Loader, i: int) -> None:
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = (
            _linear(load.get(i, f"mlp.{n}.weight"), None) for n in ("gate_proj", "up_proj", "down_proj"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, load: Loader, i: int, cfg, bug: str | None) -> None:
        super().__init__()
        eps = 1e-5 if bug == "eps" else cfg.rms_norm_eps
        self.attention_norm = RMSNorm(load.get(i, "input_layernorm.weight"), eps)
        self.attention = Attention(load, i, cfg, bug)
        self.ffn_norm = RMSNorm(load.get(i, "post_attention_layernorm.weight"), cfg.rms_norm_eps)
        self.feed_forward = FeedForward(load, i)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pad: torch.Tensor | None,
                past: KV | None) -> tuple[torch.Tensor, KV]:
        a, kv = self.attention(self.attention_norm(x), cos, sin, pad, past)
        x = x + a
        return x + self.feed_forward(self.ffn_norm(x)), kv


class HFLikePort(nn.Module):
    """Llama / Qwen2 in HF-like modules; a KV cache of per-layer (k, v), positions counted from the mask."""

    def __init__(self, hf: nn.Module, bug: str | None = None) -> None:
        super().__init__()
        if bug is not None and bug not in BUGS:
            raise ValueError(f"unknown bug {bug!r}; choose among {BUGS}")
        cfg, load = hf.config, Loader(hf, bug)
        self.embed_tokens = nn.Embedding.from_pretrained(load.sd["model.embed_tokens.weight"].clone(), freeze=False)
        self.layers = nn.ModuleList(Block(load, i, cfg, bug) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(load.sd["model.norm.weight"], cfg.rms_norm_eps)
        self.lm_head = _linear(load.sd["lm_head.weight"].clone(), None)
        D = cfg.hidden_size // cfg.num_attention_heads
        theta = cfg.rope_parameters["rope_theta"] * (50 if bug == "rope_base" else 1)
        self.register_buffer("inv_freq", 1.0 / theta ** (torch.arange(0, D, 2).float() / D), persistent=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                past_key_values: tuple | None = None, use_cache: bool = False) -> torch.Tensor | dict:
        """Logits (B, T, V); with use_cache, {"logits", "past_key_values"}. attention_mask covers (B, L+T)."""
        B, T = input_ids.shape
        past = past_key_values or (None,) * len(self.layers)
        L = 0 if past_key_values is None else past_key_values[0][0].shape[2]
        mask = attention_mask if attention_mask is not None else torch.ones(B, L + T, dtype=torch.long)
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]  # (B, T)
        freqs = positions.float()[..., None] * self.inv_freq  # (B, T, D/2)
        angles = torch.cat((freqs, freqs), dim=-1)[:, None]  # (B, 1, T, D)
        x = self.embed_tokens(input_ids)  # (B, T, C)
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        cache = []
        for block, kv in zip(self.layers, past):
            x, kv = block(x, cos, sin, attention_mask, kv)
            cache.append(kv)
        logits = self.lm_head(self.norm(x))
        return {"logits": logits, "past_key_values": tuple(cache)} if use_cache else logits


def port(hf: nn.Module, bug: str | None) -> nn.Module:
    return HFLikePort(hf, bug).eval()


def _entry(bug: str, what: str, point: str, fix: str, reference=llama, case: str | None = None) -> Mistake:
    return Mistake(STYLE, bug, what, point, fix, reference, port, case)


MISTAKES: tuple[Mistake, ...] = (
    _entry("kv_swap", "k and v weights swapped", "block 0 attention", "weights: swap back"),
    _entry("qk_swap", "q and k weights swapped", "block 0 attention", "weights: swap back", llama_mha),
    _entry("gate_up_swap", "gate and up weights swapped", "block 0 mlp", "weights: swap back"),
    _entry("layers_swap", "layers 0 and 1 swapped", "block 0 attention norm", "weights: swap back"),
    _entry("norms_swap", "attention norm and MLP norm swapped", "block 0 attention norm", "weights: swap back"),
    _entry("no_qkv_bias", "q/k/v biases left out (Qwen2)", "block 0 attention", "add missing bias", qwen),
    _entry("extra_bias", "an extra bias on the attention output", "block 0 attention", "zero extra parameter"),
    _entry("mask_shift", "causal mask shifted by one", "block 0 attention", "mask: causal"),
    _entry("no_scale", "attention scale 1/sqrt(D) missing", "block 0 attention", "scale x 1/sqrt(D)"),
    _entry("eps", "norm epsilon 1e-5 for 1e-6", "block 0 attention norm", "norm eps 1e-05 -> 1e-06"),
    _entry("rope_base", "RoPE base wrong (inv_freq buffer)", "block 0 attention", "RoPE base 10000"),
    _entry("padding", "padding ignored", "block 0 attention", "mask: padding", case="padded"),
    _entry("interleaved", "adjacent pairs rotated where the reference rotates halves", "block 0 attention",
           "RoPE: half-split"),
)
