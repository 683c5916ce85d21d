"""Hand-written ports of HF Llama/Qwen2 and GPT-2, each with one switchable porting mistake.

A port copies the HF model's weights into modules of its own layout (the way people port a model by
hand), then computes the forward its own way. `bug=None` is a correct port.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

LLAMA_BUGS = ("interleaved", "mask_shift", "no_scale", "eps", "qk_perm", "untied", "padding", "rope_base", "gelu",
              "norm_low_precision", "naive_softmax", "cache_positions")
GPT2_BUGS = ("conv1d_transposed", "gelu_exact", "post_norm")


class RMSNorm(nn.Module):
    def __init__(self, weight: torch.Tensor, eps: float, upcast: bool = True) -> None:
        super().__init__()
        self.weight, self.eps, self.upcast = nn.Parameter(weight.detach().clone()), eps, upcast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.upcast:  # the mistake: x ** 2 in float16 overflows once |x| > 256
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


def linear(weight: torch.Tensor, bias: torch.Tensor | None = None) -> nn.Linear:
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        out.weight.copy_(weight)
        if bias is not None:
            out.bias.copy_(bias)
    return out


def llama_cpp_permute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """What llama.cpp's converter stores for q/k (H*D, C): rows of each head reordered into pairs."""
    rows, C = w.shape
    return w.reshape(heads, 2, rows // heads // 2, C).transpose(1, 2).reshape(rows, C)


class LlamaAttention(nn.Module):
    def __init__(self, sd: dict, p: str, cfg, bug: str | None) -> None:
        super().__init__()
        self.H, self.K = cfg.num_attention_heads, cfg.num_key_value_heads
        self.D = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.H
        self.bug = bug
        q, k = sd[p + "q_proj.weight"], sd[p + "k_proj.weight"]
        if bug == "qk_perm":  # loaded from a llama.cpp file without undoing its permutation
            q, k = llama_cpp_permute(q, self.H), llama_cpp_permute(k, self.K)
        self.wq = linear(q, sd.get(p + "q_proj.bias"))
        self.wk = linear(k, sd.get(p + "k_proj.bias"))
        self.wv = linear(sd[p + "v_proj.weight"], sd.get(p + "v_proj.bias"))
        self.wo = linear(sd[p + "o_proj.weight"])

    def rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        if self.bug == "interleaved":  # rotates (x0, x1), (x2, x3), ...
            x1, x2 = x[..., 0::2], x[..., 1::2]
            c, s = cos[..., : self.D // 2], sin[..., : self.D // 2]
            return torch.stack((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).flatten(-2)
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat((-x2, x1), dim=-1) * sin

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pad: torch.Tensor | None,
                past: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Attention of x (B, T, C) over the cached keys/values `past` (B, K, L, D) and its own; pad (B, L+T)."""
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.H, self.D).transpose(1, 2)  # (B, H, T, D)
        k = self.wk(x).view(B, T, self.K, self.D).transpose(1, 2)  # (B, K, T, D)
        v = self.wv(x).view(B, T, self.K, self.D).transpose(1, 2)  # (B, K, T, D)
        q, k = self.rope(q, cos, sin), self.rope(k, cos, sin)
        if past is not None:
            k, v = torch.cat((past[0], k), dim=2), torch.cat((past[1], v), dim=2)  # (B, K, S, D), S = L+T
        S = k.shape[2]
        mask = torch.ones(T, S, dtype=torch.bool).tril(S - T + (1 if self.bug == "mask_shift" else 0))  # (T, S)
        if pad is not None and self.bug != "padding":
            mask = mask & pad.bool()[:, None, None, :]  # (B, 1, T, S)
            mask = mask | ~mask.any(-1, keepdim=True)  # padding queries attend to themselves
        if self.bug == "naive_softmax":
            y = self.naive(q, k, v, mask)
        else:
            scale = 1.0 if self.bug == "no_scale" else None
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=True)  # (B, H, T, D)
        return self.wo(y.transpose(1, 2).reshape(B, T, self.H * self.D)), (k, v)

    def naive(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Softmax written out without subtracting each row's max: fine in float32, but in float16 exp overflows
        once a score passes 11.1."""
        k, v = (t.repeat_interleave(self.H // self.K, dim=1) for t in (k, v))  # (B, H, S, D)
        att = (q @ k.transpose(-2, -1)) * self.D ** -0.5  # (B, H, T, S)
        w = att.masked_fill(~mask, float("-inf")).exp()
        return (w / w.sum(-1, keepdim=True)) @ v  # (B, H, T, D)


class LlamaMLP(nn.Module):
    def __init__(self, sd: dict, p: str, bug: str | None) -> None:
        super().__init__()
        self.gate, self.up, self.down = (linear(sd[p + n]) for n in ("gate_proj.weight", "up_proj.weight",
                                                                     "down_proj.weight"))
        self.act = (lambda x: F.gelu(x, approximate="tanh")) if bug == "gelu" else F.silu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.gate(x)) * self.up(x))


class LlamaBlock(nn.Module):
    def __init__(self, sd: dict, i: int, cfg, bug: str | None) -> None:
        super().__init__()
        p = f"model.layers.{i}."
        eps = 1e-5 if bug == "eps" else cfg.rms_norm_eps
        upcast = bug != "norm_low_precision"
        self.attn_norm = RMSNorm(sd[p + "input_layernorm.weight"], eps, upcast)
        self.attn = LlamaAttention(sd, p + "self_attn.", cfg, bug)
        self.mlp_norm = RMSNorm(sd[p + "post_attention_layernorm.weight"], cfg.rms_norm_eps, upcast)
        self.mlp = LlamaMLP(sd, p + "mlp.", bug)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pad: torch.Tensor | None,
                past: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        a, kv = self.attn(self.attn_norm(x), cos, sin, pad, past)
        x = x + a
        return x + self.mlp(self.mlp_norm(x)), kv


class HandLlama(nn.Module):
    """Llama / Qwen2 by hand: separate q/k/v, SDPA with an explicit boolean mask, a KV cache of per-layer (k, v)
    tuples, positions counted from the attention mask (restarting after left padding, as generate counts them).
    The port takes the reference's dtype."""

    def __init__(self, hf: nn.Module, bug: str | None = None) -> None:
        super().__init__()
        assert bug is None or bug in LLAMA_BUGS, bug
        cfg, sd = hf.config, hf.state_dict()
        self.embed = nn.Embedding.from_pretrained(sd["model.embed_tokens.weight"].clone(), freeze=False)
        self.layers = nn.ModuleList(LlamaBlock(sd, i, cfg, bug) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(sd["model.norm.weight"], cfg.rms_norm_eps, bug != "norm_low_precision")
        head = sd["lm_head.weight"].clone()
        if bug == "untied":  # the loader forgot to tie the head: it keeps its random initialisation
            head = torch.randn(head.shape, generator=torch.Generator().manual_seed(3)) * 0.02
        self.head = linear(head)
        D = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        theta = cfg.rope_parameters["rope_theta"] * (50 if bug == "rope_base" else 1)
        self.bug = bug
        self.to(hf.dtype)  # the rotary frequencies stay in float32, as HF keeps them
        self.register_buffer("inv_freq", 1.0 / theta ** (torch.arange(0, D, 2).float() / D), persistent=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                past_key_values: tuple | None = None, use_cache: bool = False) -> torch.Tensor | dict:
        """Logits (B, T, V); with use_cache, {"logits", "past_key_values"}. attention_mask covers (B, L+T)."""
        B, T = input_ids.shape
        past = past_key_values or (None,) * len(self.layers)
        L = 0 if past_key_values is None else past_key_values[0][0].shape[2]
        mask = attention_mask if attention_mask is not None else torch.ones(B, L + T, dtype=torch.long)
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, L+T)
        # the mistake: the first T positions of the mask instead of the last, so they restart at 0 in the cache
        positions = positions[:, :T] if self.bug == "cache_positions" else positions[:, -T:]  # (B, T)
        freqs = positions.float()[..., None] * self.inv_freq  # (B, T, D/2)
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # (B, 1, T, D)
        x = self.embed(input_ids)
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        cache = []
        for block, kv in zip(self.layers, past):
            x, kv = block(x, cos, sin, attention_mask, kv)
            cache.append(kv)
        logits = self.head(self.norm(x))
        return {"logits": logits, "past_key_values": tuple(cache)} if use_cache else logits


class GPT2Block(nn.Module):
    def __init__(self, sd: dict, i: int, cfg, bug: str | None) -> None:
        super().__init__()
        p = f"transformer.h.{i}."
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        for ln, name in ((self.ln_1, "ln_1"), (self.ln_2, "ln_2")):
            ln.load_state_dict({"weight": sd[p + name + ".weight"], "bias": sd[p + name + ".bias"]})
        self.attn = GPT2Attention(sd, p + "attn.", cfg, bug)
        self.mlp = GPT2MLP(sd, p + "mlp.", bug)
        self.post_norm = bug == "post_norm"

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
        if self.post_norm:  # the mistake: the original Transformer's layout, a norm after each residual add
            x = self.ln_1(x + self.attn(x, pad))
            return self.ln_2(x + self.mlp(x))
        x = x + self.attn(self.ln_1(x), pad)
        return x + self.mlp(self.ln_2(x))


class GPT2Attention(nn.Module):
    def __init__(self, sd: dict, p: str, cfg, bug: str | None) -> None:
        super().__init__()
        self.H = cfg.n_head
        self.qkv = linear(sd[p + "c_attn.weight"].t(), sd[p + "c_attn.bias"])  # Conv1D (in, out) -> Linear
        proj = sd[p + "c_proj.weight"]
        self.proj = linear(proj if bug == "conv1d_transposed" else proj.t(), sd[p + "c_proj.bias"])

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.H, C // self.H).transpose(1, 2) for t in self.qkv(x).split(C, -1))  # (B, H, T, D)
        mask = torch.ones(T, T, dtype=torch.bool).tril()
        if pad is not None:
            mask = mask & pad.bool()[:, None, None, :]  # (B, 1, T, T)
            mask = mask | ~mask.any(-1, keepdim=True)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, T, D)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class GPT2MLP(nn.Module):
    def __init__(self, sd: dict, p: str, bug: str | None) -> None:
        super().__init__()
        self.fc = linear(sd[p + "c_fc.weight"].t(), sd[p + "c_fc.bias"])
        self.proj = linear(sd[p + "c_proj.weight"].t(), sd[p + "c_proj.bias"])
        self.approximate = "none" if bug == "gelu_exact" else "tanh"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x), approximate=self.approximate))


class HandGPT2(nn.Module):
    """GPT-2 by hand: Linear layers (Conv1D weights transposed), fused q/k/v, learned positions, tied head."""

    def __init__(self, hf: nn.Module, bug: str | None = None) -> None:
        super().__init__()
        assert bug is None or bug in GPT2_BUGS, bug
        cfg, sd = hf.config, hf.state_dict()
        self.wte = nn.Embedding.from_pretrained(sd["transformer.wte.weight"].clone(), freeze=False)
        self.wpe = nn.Embedding.from_pretrained(sd["transformer.wpe.weight"].clone(), freeze=False)
        self.h = nn.ModuleList(GPT2Block(sd, i, cfg, bug) for i in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.ln_f.load_state_dict({"weight": sd["transformer.ln_f.weight"], "bias": sd["transformer.ln_f.bias"]})

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        B, T = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(T)[None].expand(B, T)
        x = self.wte(input_ids) + self.wpe(position_ids)
        for block in self.h:
            x = block(x, attention_mask)
        return self.ln_f(x) @ self.wte.weight.t()  # tied head  (B, T, V)




def gemma3_norms_after_the_add(hf: nn.Module) -> nn.Module:
    """A Gemma 3 port that reuses HF's modules but writes its own decoder layer with the Llama habit: the
    post-attention and post-feedforward norms applied after the residual add, not to each branch's output."""
    port = copy.deepcopy(hf)
    for layer in port.model.layers:
        def forward(hidden_states: torch.Tensor, _layer: nn.Module = layer, **kwargs) -> torch.Tensor:
            h, _ = _layer.self_attn(hidden_states=_layer.input_layernorm(hidden_states), **kwargs)
            x = _layer.post_attention_layernorm(hidden_states + h)  # HF: x = hidden_states + norm(h)
            return _layer.post_feedforward_layernorm(x + _layer.mlp(_layer.pre_feedforward_layernorm(x)))
        layer.forward = forward
    return port
