"""Building blocks: hook sites, embeddings, norms, MLPs and rotary embeddings.

Shape vocabulary used in every comment: B batch, T time (query length), S key length,
C channels (d_model), H query heads, K key/value heads, D head dim, F MLP width, V vocab.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig, RopeScaling


class HookPoint(nn.Module):
    """An identity module that names a place in the forward pass, so hooks can attach to it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @property
    def is_hooked(self) -> bool:
        """True when someone listens here (forward hooks), so the caller may compute extra detail."""
        return bool(self._forward_hooks) or bool(self._forward_pre_hooks)


class RMSNorm(nn.Module):
    """Root-mean-square norm, computed in float32 and cast back (as Llama does)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


class OffsetRMSNorm(RMSNorm):
    """RMSNorm scaling by (1 + weight), all in float32 before the cast back (as Gemma does).

    The weights are offsets from one, so they start at zero; the order of the cast differs from
    `RMSNorm` (Llama casts before scaling), which matters below float32.
    """

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__(dim, eps)
        nn.init.zeros_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x32 * (1.0 + self.weight.float())).to(x.dtype)


def make_norm(config: ModelConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return (OffsetRMSNorm if config.norm_offset else RMSNorm)(config.d_model, config.norm_eps)
    return nn.LayerNorm(config.d_model, eps=config.norm_eps)


class ScaledEmbedding(nn.Embedding):
    """Token embedding times sqrt(C), the factor computed in float32 and rounded to the weights' dtype
    (as HF Gemma: sqrt(3072) = 55.43 becomes 55.5 in bfloat16)."""

    scale: torch.Tensor  # () buffer registered in __init__

    def __init__(self, num_embeddings: int, embedding_dim: int, _weight: torch.Tensor | None = None) -> None:
        super().__init__(num_embeddings, embedding_dim, _weight=_weight)
        self._exact = torch.tensor(embedding_dim**0.5)  # float32 on the CPU: what dtype casts restore
        self.register_buffer("scale", self._exact.clone(), persistent=False)  # ()

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001, ANN202 (torch's signature)
        """Device moves apply, but the factor comes back exact in float32 (see `Rotary._apply`)."""
        super()._apply(fn, recurse)
        if self._exact.is_meta and not self.scale.is_meta:  # built on the meta device, now leaving it
            self._exact = torch.tensor(self.embedding_dim**0.5, device="cpu")
        self.scale = self._exact.to(self.scale.device)
        return self

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, C)
        return super().forward(input_ids) * self.scale.to(self.weight.dtype)


def make_embedding(config: ModelConfig, *, init: bool = True) -> nn.Embedding:
    """The token embedding; init=False leaves its weight unset (`torch.empty`) instead of drawing it."""
    cls = ScaledEmbedding if config.embed_scale else nn.Embedding
    return cls(config.vocab_size, config.d_model, _weight=_unset(config.vocab_size, config.d_model, init))


def make_position_embedding(config: ModelConfig, *, init: bool = True) -> nn.Embedding:
    """The learned position embedding (max_seq_len rows); init=False as in `make_embedding`."""
    return nn.Embedding(config.max_seq_len, config.d_model, _weight=_unset(config.max_seq_len, config.d_model, init))


def _unset(rows: int, dim: int, init: bool) -> torch.Tensor | None:
    """An embedding weight left unset, or None to let the embedding draw one. On the meta device this takes no
    memory and skips `normal_`, whose meta kernel imports sympy and torch._dynamo (seconds, once per process)."""
    return None if init else torch.empty(rows, dim)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {  # mlp kind -> nonlinearity
    "gelu": gelu_tanh,
    "swiglu": F.silu,
    "geglu": gelu_tanh,
}
GATED = ("swiglu", "geglu")  # kinds whose nonlinearity gates a second projection: act(gate) * up


class MLP(nn.Module):
    """GELU MLP (fc -> gelu -> proj), or a gated one (SwiGLU, GeGLU) with a fused gate/up projection."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.kind = config.mlp
        self.gated = config.mlp in GATED
        self.act = ACTIVATIONS[config.mlp]
        width = 2 * config.d_ff if self.gated else config.d_ff
        self.up = nn.Linear(config.d_model, width, bias=config.mlp_bias)  # gated: [gate; up]
        self.down = nn.Linear(config.d_ff, config.d_model, bias=config.mlp_bias)
        self.hook_hidden = HookPoint()  # (B, T, F) after the nonlinearity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x)  # (B, T, F) or, gated, (B, T, 2F)
        if self.gated:
            gate, up = h.chunk(2, dim=-1)  # (B, T, F) each
            h = self.act(gate) * up
        else:
            h = self.act(h)
        return self.down(self.hook_hidden(h))


def scaled_inv_freq(inv_freq: torch.Tensor, scaling: RopeScaling | None) -> torch.Tensor:
    """RoPE inverse frequencies (D/2,) after long-context `scaling`, in inv_freq's dtype.

    "linear" slows every frequency by `factor`. "llama3" measures each frequency's wavelength
    (positions per turn) against the pre-training context L: waves longer than L / low_freq_factor
    are slowed by `factor`, waves shorter than L / high_freq_factor are kept (they never saw a
    longer context than they resolve), and a ramp linear in L / wavelength blends the two between.
    """
    if scaling is None:
        return inv_freq
    if scaling.kind == "linear":
        return inv_freq / scaling.factor
    turns = scaling.original_max_seq_len / (2 * math.pi / inv_freq)  # (D/2,) turns within the old context
    span = scaling.high_freq_factor - scaling.low_freq_factor
    keep = ((turns - scaling.low_freq_factor) / span).clamp(0.0, 1.0)  # (D/2,) 0 = slow down, 1 = keep
    return (1 - keep) * inv_freq / scaling.factor + keep * inv_freq


class Rotary(nn.Module):
    """Rotary position embedding in the half-split convention (HF Llama's `rotate_half`).

    Scaling (`config.rope_scaling`) is folded into `inv_freq` once here, so every caller that asks
    this module for cos/sin (plain forward, KV cache, `fast.decode_step`) rotates by the same angles.
    """

    inv_freq: torch.Tensor  # (D/2,) buffer registered in __init__

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self._dim, self._theta, self._scaling = config.head_dim, config.rope_theta, config.rope_scaling
        if torch.get_default_device().type == "meta":  # shapes only: computed when the model leaves the device
            inv_freq = torch.empty(self._dim // 2)  # (arange there would import torch._dynamo: seconds)
        else:
            inv_freq = self._frequencies()
        self._exact = inv_freq  # float32 on the CPU: what dtype casts restore (see _apply)
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # (D/2,)

    def _frequencies(self, device: torch.device | str | None = None) -> torch.Tensor:
        """The scaled inverse frequencies (D/2,) in float32, on `device` (None: torch's current default)."""
        d = self._dim
        inv_freq = 1.0 / (self._theta ** (torch.arange(0, d, 2, dtype=torch.float32, device=device) / d))
        return scaled_inv_freq(inv_freq, self._scaling)

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001, ANN202 (torch's signature)
        """Device moves apply as usual, but the frequencies come back exact and in float32 after any
        of them: a dtype cast (`model.to(torch.bfloat16)`, `.half()`) would round them to 8 bits and
        turn position 1,000 up to about a radian too far (HF's `from_pretrained(dtype=...)` keeps
        them in float32 as well), and `to_empty()` would leave them uninitialised. A model built on the meta
        device computes them when it leaves it, on the CPU as a model built there does."""
        super()._apply(fn, recurse)
        if self._exact.is_meta and not self.inv_freq.is_meta:
            self._exact = self._frequencies("cpu")
        self.inv_freq = self._exact.to(self.inv_freq.device)
        return self

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin for `position_ids` (B, T), each (B, 1, T, D), in `dtype`."""
        freqs = position_ids.float()[..., None] * self.inv_freq.float()  # (B, T, D/2)
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # (B, 1, T, D)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate `x` (B, H, T, D) by the angles in cos/sin (B, 1, T, D)."""
    x1, x2 = x.chunk(2, dim=-1)  # (B, H, T, D/2) each
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def init_weights(module: nn.Module, config: ModelConfig) -> None:
    """Normal(0, init_std) weights, zero biases, unit norms (zero offsets for `norm_offset`); residual
    outputs scaled by 1/sqrt(2L)."""
    for name, p in module.named_parameters():
        if p.dim() >= 2:
            std = config.init_std
            if name.endswith(("attn.out.weight", "mlp.down.weight")):
                std = std / math.sqrt(2 * config.n_layers)
            nn.init.normal_(p, 0.0, std)
        elif name.endswith("bias") or config.norm_offset:
            nn.init.zeros_(p)
        else:
            nn.init.ones_(p)
