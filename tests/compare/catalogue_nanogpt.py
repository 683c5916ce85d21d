"""The nanoGPT-like port of HF GPT-2, with one switch per planted mistake, and its catalogue entries.

The port is written the way nanoGPT writes GPT-2: `transformer.wte/wpe/h/ln_f`, a fused `c_attn` nn.Linear
(HF's Conv1D weights transposed on load), a registered `bias` tril buffer as the causal mask, attention written
by hand (`q @ k.transpose(-2, -1)`, a scale, a mask fill, `softmax`, dropout, `@ v`), a `c_fc`/`c_proj` MLP and an
`lm_head` tied to `wte`. What compare needs is added as nanoGPT forks add it: `attention_mask` (left padding,
positions restarting after it) and a KV cache of per-layer (k, v) tuples (`past_key_values`, `use_cache`, the
forward returning `(logits, presents)` when asked for the cache).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import hfzoo
import torch
import torch.nn.functional as F
from catalogue import Mistake
from families.familymodels import randomize
from torch import nn

BUGS = ("no_scale", "scale_1_over_d", "softmax_axis", "mask_after_softmax", "mask_shift", "mask_transposed",
        "padding", "positions_off_by_one", "positions_cache", "positions_padding", "gelu_exact", "conv1d",
        "post_norm", "qk_swap", "no_ln_bias", "no_wpe", "mlp_swap", "layers_swap", "norms_swap", "no_ln_affine")
FORMS = ("matmul", "einsum")  # the attention written with `@` and F.softmax, or with torch.einsum and exp / sum

Past = tuple[torch.Tensor, torch.Tensor]


@functools.cache
def reference() -> nn.Module:
    """HF GPT-2 (2 layers, C = 32, 4 heads), random norms and biases, c_fc scaled up so that exact and tanh GELU
    differ above noise (HF's init keeps pre-activations near zero, where the two agree to 1e-6)."""
    hf = randomize(hfzoo.build("gpt2"), (0.5, 1.5))
    with torch.no_grad():
        for block in hf.transformer.h:
            block.mlp.c_fc.weight.mul_(10)
    return hf


def linear(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    """An nn.Linear holding weight (out, in) and bias (out,)."""
    out = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        out.weight.copy_(weight)
        out.bias.copy_(bias)
    return out


class CausalSelfAttention(nn.Module):
    def __init__(self, sd: dict, p: str, n_head: int, block_size: int, bug: str | None, form: str) -> None:
        super().__init__()
        self.n_head, self.bug, self.form = n_head, bug, form
        w, b = sd[p + "c_attn.weight"].t(), sd[p + "c_attn.bias"]  # Conv1D (in, out) -> Linear (3C, C)
        if bug == "qk_swap":  # the loader writes k's rows where q's belong and q's where k's belong
            C = w.shape[1]
            order = torch.cat((torch.arange(C, 2 * C), torch.arange(C), torch.arange(2 * C, 3 * C)))
            w, b = w[order], b[order]
        self.c_attn = linear(w, b)
        proj = sd[p + "c_proj.weight"]
        self.c_proj = linear(proj if bug == "conv1d" else proj.t(), sd[p + "c_proj.bias"])
        self.attn_dropout, self.resid_dropout = nn.Dropout(0.0), nn.Dropout(0.0)
        self.register_buffer("bias", torch.tril(torch.ones(block_size, block_size)).view(1, 1, block_size, block_size))

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None, past: Past | None) -> tuple[torch.Tensor, Past]:
        """x (B, T, C) attends to the cached keys/values `past` (B, nh, L, hs) and its own; pad (B, L+T) 1 = token."""
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if past is not None:
            k, v = torch.cat((past[0], k), dim=2), torch.cat((past[1], v), dim=2)  # (B, nh, S, hs), S = L+T
        S = k.size(-2)
        att = self.scores(q, k)  # (B, nh, T, S)
        causal = self.causal(T, S)  # (1, 1, T, S)
        if self.bug != "mask_after_softmax":
            att = att.masked_fill(causal == 0, float("-inf"))
        if pad is not None and self.bug != "padding":  # padding keys get the dtype's min, so no row is all -inf
            att = att.masked_fill(pad[:, None, None, :] == 0, torch.finfo(att.dtype).min)
        att = self.softmax(att, -2 if self.bug == "softmax_axis" else -1)
        if self.bug == "mask_after_softmax":  # probabilities zeroed, not renormalised
            att = att.masked_fill(causal == 0, 0.0)
        att = self.attn_dropout(att)
        y = att @ v if self.form == "matmul" else torch.einsum("bhts,bhsd->bhtd", att, v)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y)), (k, v)

    def scores(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """q (B, nh, T, hs) against k (B, nh, S, hs): (B, nh, T, S), scaled by 1/sqrt(hs)."""
        att = q @ k.transpose(-2, -1) if self.form == "matmul" else torch.einsum("bhtd,bhsd->bhts", q, k)
        if self.bug == "no_scale":
            return att
        if self.bug == "scale_1_over_d":
            return att * (1.0 / k.size(-1))
        return att * (1.0 / math.sqrt(k.size(-1)))

    def softmax(self, att: torch.Tensor, dim: int) -> torch.Tensor:
        """F.softmax, or written out as exp / sum with the max subtracted (the einsum form)."""
        if self.form == "matmul":
            return F.softmax(att, dim=dim)
        e = torch.exp(att - att.amax(dim, keepdim=True))
        return e / e.sum(dim, keepdim=True)

    def causal(self, T: int, S: int) -> torch.Tensor:
        """The rows of the `bias` buffer for the T new queries over S keys (1 = may attend): (1, 1, T, S)."""
        if self.bug == "mask_shift":  # each query also sees the next position
            return self.bias[:, :, S - T + 1:S + 1, :S]
        if self.bug == "mask_transposed":
            return self.bias[:, :, :S, :S].transpose(-2, -1)[:, :, S - T:S]
        return self.bias[:, :, S - T:S, :S]


class MLP(nn.Module):
    def __init__(self, sd: dict, p: str, bug: str | None) -> None:
        super().__init__()
        self.c_fc = linear(sd[p + "c_fc.weight"].t(), sd[p + "c_fc.bias"])
        self.gelu = nn.GELU() if bug == "gelu_exact" else nn.GELU(approximate="tanh")
        self.c_proj = linear(sd[p + "c_proj.weight"].t(), sd[p + "c_proj.bias"])
        self.dropout = nn.Dropout(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


def layer_norm(cfg, bug: str | None) -> nn.LayerNorm:
    """The port's LayerNorm: nanoGPT's `bias=False` option (no_ln_bias), or no affine at all (no_ln_affine)."""
    return nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon, bias=bug != "no_ln_bias",
                        elementwise_affine=bug != "no_ln_affine")


def load_norm(ln: nn.LayerNorm, sd: dict, name: str) -> None:
    """The checkpoint's norm `name` loaded into `ln`, as far as `ln` has parameters to hold it."""
    with torch.no_grad():
        if ln.weight is not None:
            ln.weight.copy_(sd[name + ".weight"])
        if ln.bias is not None:
            ln.bias.copy_(sd[name + ".bias"])


class Block(nn.Module):
    def __init__(self, sd: dict, i: int, cfg, bug: str | None, form: str) -> None:
        super().__init__()
        p = f"transformer.h.{i}."
        swapped = f"transformer.h.{cfg.n_layer - 1 - i}."  # layers_swap, mlp_swap: the other layer's weights
        self.ln_1, self.ln_2 = layer_norm(cfg, bug), layer_norm(cfg, bug)
        self.attn = CausalSelfAttention(sd, (swapped if bug == "layers_swap" else p) + "attn.", cfg.n_head,
                                        cfg.n_positions, bug, form)
        self.mlp = MLP(sd, (swapped if bug in ("layers_swap", "mlp_swap") else p) + "mlp.", bug)
        src = swapped if bug == "layers_swap" else p
        names = ("ln_2", "ln_1") if bug == "norms_swap" else ("ln_1", "ln_2")
        for ln, name in zip((self.ln_1, self.ln_2), names):
            load_norm(ln, sd, src + name)
        self.post_norm = bug == "post_norm"

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None, past: Past | None) -> tuple[torch.Tensor, Past]:
        if self.post_norm:  # the original Transformer's layout: a norm after each residual add
            a, present = self.attn(x, pad, past)
            x = self.ln_1(x + a)
            return self.ln_2(x + self.mlp(x)), present
        a, present = self.attn(self.ln_1(x), pad, past)
        x = x + a
        return x + self.mlp(self.ln_2(x)), present


class GPT(nn.Module):
    """GPT-2 as nanoGPT writes it, loaded from an HF GPT-2 (`bug` None: a correct port)."""

    def __init__(self, hf: nn.Module, bug: str | None = None, form: str = "matmul") -> None:
        super().__init__()
        if bug is not None and bug not in BUGS:
            raise ValueError(f"unknown bug {bug!r}; choose among {BUGS}")
        cfg, sd = hf.config, hf.state_dict()
        self.bug = bug
        parts = dict(wte=nn.Embedding(cfg.vocab_size, cfg.n_embd))
        if bug != "no_wpe":  # no_wpe: the position table left out
            parts["wpe"] = nn.Embedding(cfg.n_positions, cfg.n_embd)
        self.transformer = nn.ModuleDict(dict(
            **parts,
            h=nn.ModuleList(Block(sd, i, cfg, bug, form) for i in range(cfg.n_layer)),
            ln_f=layer_norm(cfg, bug),
        ))
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying, as nanoGPT ties them
        with torch.no_grad():
            self.transformer.wte.weight.copy_(sd["transformer.wte.weight"])
            if "wpe" in self.transformer:
                self.transformer.wpe.weight.copy_(sd["transformer.wpe.weight"])
        load_norm(self.transformer.ln_f, sd, "transformer.ln_f")

    def forward(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None,
                past_key_values: tuple[Past, ...] | None = None, use_cache: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, tuple[Past, ...]]:
        """Logits (B, T, V) of idx (B, T); with use_cache, (logits, presents). attention_mask covers (B, L+T)."""
        B, T = idx.size()
        L = past_key_values[0][0].size(2) if past_key_values else 0
        pos = self.positions(B, T, L, attention_mask)  # (T,) or (B, T)
        x = self.transformer.wte(idx)  # (B, T, C)
        if "wpe" in self.transformer:
            x = x + self.transformer.wpe(pos)
        presents = []
        for block, past in zip(self.transformer.h, past_key_values or (None,) * len(self.transformer.h)):
            x, present = block(x, attention_mask, past)
            presents.append(present)
        logits = self.lm_head(self.transformer.ln_f(x))  # (B, T, V)
        return (logits, tuple(presents)) if use_cache else logits

    def positions(self, B: int, T: int, L: int, mask: torch.Tensor | None) -> torch.Tensor:
        """The rows of `wpe` for the T new tokens after L cached ones, restarting at 0 after left padding."""
        if self.bug == "positions_off_by_one":  # 1..T
            return torch.arange(L + 1, L + T + 1)
        if mask is None or self.bug == "positions_padding":  # counted through the padding
            return torch.arange(L, L + T) if self.bug != "positions_cache" else torch.arange(T)
        if self.bug == "positions_cache":  # counted over the new tokens' mask only: 0.. again inside the cache
            mask = mask[:, -T:]
        return (mask.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]  # (B, T)


def port(hf: nn.Module, bug: str | None) -> nn.Module:
    return GPT(hf, bug).eval()


def einsum_port(hf: nn.Module, bug: str | None) -> nn.Module:
    """The port with its attention written with torch.einsum and a softmax written out as exp / sum."""
    return GPT(hf, bug, "einsum").eval()


def _entry(bug: str, what: str, point: str, fix: str, case: str | None = None) -> Mistake:
    return Mistake("nanoGPT-like", bug, what, point, fix, reference, port, case)


def _einsum(plain: Mistake) -> Mistake:
    """The same mistake planted in the einsum form of the port (attention by `einsum`, softmax as exp / sum)."""
    return dataclasses.replace(plain, style="nanoGPT-like (einsum)", port=einsum_port)


_PLAIN: tuple[Mistake, ...] = (
    _entry("no_scale", "attention scale 1/sqrt(D) missing", "block 0 attention", "scale x 1/sqrt(D)"),
    _entry("scale_1_over_d", "attention scale 1/D", "block 0 attention", "scale x sqrt(D)"),
    _entry("softmax_axis", "softmax over the queries", "block 0 attention", "softmax axis"),
    _entry("mask_after_softmax", "mask applied after the softmax", "block 0 attention", "mask before softmax"),
    _entry("mask_shift", "causal mask shifted by one", "block 0 attention", "mask: causal"),
    _entry("mask_transposed", "causal mask transposed", "block 0 attention", "mask: causal"),
    _entry("padding", "padding ignored", "block 0 attention", "mask: padding", "padded"),
    _entry("positions_off_by_one", "positions 1..T", "embedding", "positions from 0"),
    _entry("positions_cache", "positions restart in the cache", "embedding", "positions continue from the cache",
           "cached"),
    _entry("positions_padding", "positions not restarted after padding", "embedding",
           "positions restart after padding", "padded"),
    _entry("gelu_exact", "exact GELU where tanh", "block 0 mlp", "exact GELU -> tanh GELU"),
    _entry("conv1d", "Conv1D weight not transposed", "block 0 attention", "weights: undo transposed"),
    _entry("post_norm", "post-norm", "block 0 output", "norm placement: pre"),
    _entry("qk_swap", "q and k weights swapped", "block 0 attention", "weights: swap back"),
    _entry("no_ln_bias", "LayerNorm biases left out", "block 0 attention norm", "add missing bias"),
    _entry("no_wpe", "position table left out", "embedding", "add position table"),
    _entry("mlp_swap", "MLP weights of layers 0 and 1 swapped", "block 0 mlp", "weights: swap back"),
    _entry("layers_swap", "layers 0 and 1 swapped", "block 0 attention norm", "weights: swap back"),
    _entry("norms_swap", "attention norm and MLP norm swapped", "block 0 attention norm", "weights: swap back"),
    _entry("no_ln_affine", "norm weight left out (no affine)", "block 0 attention norm", "add missing norm weight"),
)
EINSUM_BUGS = ("no_scale", "scale_1_over_d", "softmax_axis", "mask_after_softmax", "mask_shift", "padding")
MISTAKES: tuple[Mistake, ...] = _PLAIN + tuple(_einsum(m) for m in _PLAIN if m.bug in EINSUM_BUGS)
