"""RoPE scaling in GGUF files: `llama.rope.scaling.*` metadata and llama.cpp's `rope_freqs.weight`.

llama.cpp stores Llama 3.x scaling not as parameters but as a (D/2,) tensor of per-frequency
divisors (`rope_freqs.weight`: the rotation uses inv_freq / rope_freqs). The workbench turns those
divisors back into a `RopeScaling("llama3", ...)`, so a GGUF-loaded model carries the same config
as its HF twin and can be saved in HF format; a tensor that no llama3 rule reproduces is refused
rather than approximated. Linear scaling comes from metadata (`scaling.type = "linear"` + factor).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, CorruptFileError, UnsupportedModelError
from ..model.config import RopeScaling
from ..model.layers import scaled_inv_freq

ROPE_FREQS = "rope_freqs.weight"
LLAMA3_CONTEXT = 8192  # Llama 3's pre-training context: the llama3 rule's L when the file does not say
_RTOL = 1e-5  # the divisors are float32; a wrong rule misses by far more than this


def rope_scaling_from_gguf(
    meta: Mapping[str, Any], rope_freqs: np.ndarray | None, head_dim: int, theta: float
) -> RopeScaling | None:
    """The scaling a llama GGUF asks for, or None for plain RoPE.

    meta: values of `llama.rope.scaling.{type,factor,original_context_length}` and the older
    `llama.rope.scale_linear`, keyed by their last part ("type", "factor", ..., "scale_linear");
    rope_freqs: the dequantized `rope_freqs.weight` (D/2,) or None.
    """
    kind, factor = meta.get("type"), meta.get("factor")
    if kind in (None, "none") and meta.get("scale_linear") is not None:
        kind, factor = "linear", meta["scale_linear"]  # older llama.cpp spelling of a linear factor
    if kind not in (None, "none", "linear"):
        raise UnsupportedModelError(
            f"GGUF llama.rope.scaling.type={kind!r} is not supported; the workbench honours linear scaling "
            "and Llama 3 rope_freqs only. Such files are refused rather than approximated."
        )
    linear = None
    if kind == "linear":
        if factor is None or not 0 < float(factor) < float("inf"):
            raise CorruptFileError(
                f"GGUF linear RoPE scaling needs a positive finite llama.rope.scaling.factor, got {factor!r}."
            )
        linear = float(str(np.float32(factor)))  # stored as float32: 1.100000023841858 -> 1.1
    if rope_freqs is None:
        return None if linear in (None, 1.0) else RopeScaling("linear", linear)
    if linear not in (None, 1.0):
        raise UnsupportedModelError(
            f"this GGUF combines linear RoPE scaling (factor {linear}) with a rope_freqs tensor; "
            "only one of the two is supported."
        )
    original = meta.get("original_context_length")
    return llama3_from_divisors(rope_freqs, head_dim, theta, int(original) if original else None)


def llama3_from_divisors(
    divisors: np.ndarray, head_dim: int, theta: float, original: int | None = None
) -> RopeScaling | None:
    """The llama3 RopeScaling whose inv_freq equals plain inv_freq / `divisors` (D/2,).

    factor is the largest divisor (the slowed-down long waves). Llama 3.x's low/high factors
    (1, 4) are tried first; otherwise they are fitted to the ramp band, with L = `original` or
    8192 (only the ratios L/low and L/high matter, so any L gives the same inv_freq).
    """
    divisors = np.asarray(divisors, dtype=np.float64).reshape(-1)
    if divisors.shape != (head_dim // 2,) or not np.all(np.isfinite(divisors)) or np.any(divisors <= 0):
        raise CorruptFileError(
            f"{ROPE_FREQS} must hold {head_dim // 2} positive finite divisors (head_dim / 2), "
            f"got shape {divisors.shape}; the file is corrupt."
        )
    if np.allclose(divisors, 1.0, rtol=0, atol=_RTOL):
        return None
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))  # (D/2,)
    target = (inv.double() / torch.from_numpy(divisors)).float()
    L, factor = original or LLAMA3_CONTEXT, float(str(np.float32(divisors.max())))  # 7.9999995 -> 8.0
    for candidate in (_candidate(factor, 1.0, 4.0, L), _fitted(divisors, inv, factor, L)):
        if candidate is not None and torch.allclose(scaled_inv_freq(inv, candidate), target, rtol=_RTOL, atol=0):
            return candidate
    raise UnsupportedModelError(
        f"{ROPE_FREQS} = {np.round(divisors, 4).tolist()} is not a Llama 3 (llama3) RoPE scaling rule; "
        "other per-frequency factors are not supported."
    )


def _candidate(factor: float, low: float, high: float, L: int) -> RopeScaling | None:
    try:
        return RopeScaling("llama3", factor, low_freq_factor=low, high_freq_factor=high, original_max_seq_len=L)
    except ConfigError:  # a fit that came out invalid (high <= low, ...) is simply not a match
        return None


def _fitted(divisors: np.ndarray, inv: torch.Tensor, factor: float, L: int) -> RopeScaling | None:
    """low/high factors solved from the ramp band, where 1/divisor = (1 - s)/factor + s and
    s = (L/wavelength - low) / (high - low); needs two or more frequencies on the ramp."""
    ramp = (divisors > 1 + _RTOL) & (divisors < factor * (1 - _RTOL))
    if factor <= 1 or ramp.sum() < 2:
        return None
    s = (1 / divisors[ramp] - 1 / factor) / (1 - 1 / factor)  # (R,) position on the ramp, 0..1
    turns = L * inv.double().numpy()[ramp] / (2 * np.pi)  # (R,) L / wavelength
    # turns = low * (1 - s) + high * s: linear in (low, high)
    (low, high), *_ = np.linalg.lstsq(np.stack([1 - s, s], axis=1), turns, rcond=None)
    return _candidate(factor, float(f"{low:.6g}"), float(f"{high:.6g}"), L)  # the check after decides
