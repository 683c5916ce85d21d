"""RoPE frequencies computed in the candidate's forward, found on the interception layer and replaced by the
reference's.

A port that keeps its base as a plain number and builds its tables in forward (`1.0 / base ** (arange(0, D, 2)
/ d)` each call) has no table to rebuild, and where the base is right but the exponent's d is not (the model
width for the head dim), no attribute to set either. What it does have is the call that returns its
frequencies: a 1-D float tensor (n,) that starts at 1 and falls geometrically, f_i = base^(-2i/d). `Frequencies`
is a `function` client that notes each such result and, as the fix, returns the reference's frequencies in its
place. The fix is offered only when a forward of the candidate computed frequencies the reference does not have
(so never on a clean port), and named by `rope._reading` as the table fixes are (another base, another d).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..lm.adapter import ModelAdapter
from ..lm.intercept import ALL_FUNCTIONS, Client, FunctionCall, intercept
from .fixes import Fix
from .rope import Rotary, _geometric, _reading


@dataclass(frozen=True)
class Computed:
    """Frequencies (n,) one call of the candidate's forward returned (read as `rope.Table`s are, by `_reading`)."""

    name: str
    freqs: torch.Tensor
    kind: str = "inv_freq"


def frequencies_like(x: Any) -> bool:
    """A 1-D float tensor (n >= 2) that starts at 1 and falls geometrically: base^(-2i/d)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 1 or x.numel() < 2 or not x.is_floating_point():
        return False
    f = x.detach().double()
    if not bool((f > 0).all()) or not bool((f[1:] < f[:-1]).all()) or abs(float(f[0]) - 1.0) > 1e-6:
        return False
    return _geometric(f) is not None


class Frequencies(Client):
    """Notes every frequency vector the candidate computes (`seen`); with `target` (n,), returns it in place of
    each one of the same length that differs from it."""

    functions = ALL_FUNCTIONS

    def __init__(self, target: torch.Tensor | None = None) -> None:
        self.target = target
        self.seen: list[tuple[str, torch.Tensor]] = []

    def function(self, call: FunctionCall) -> Any:
        out = call.proceed()
        if not frequencies_like(out):
            return out
        self.seen.append((f"{call.module or 'model'}: {call.name}", out.detach().double()))
        t = self.target
        if t is not None and out.numel() == t.numel() and not _same(out, t):
            return t.to(out.device, out.dtype)
        return out


def _same(f: torch.Tensor, g: torch.Tensor) -> bool:
    return f.numel() == g.numel() and bool(torch.allclose(f.double(), g.double(), rtol=1e-4, atol=0))


def forward_rope_fixes(reference: nn.Module, candidate: nn.Module, adapter: ModelAdapter,
                       ids: torch.Tensor) -> list[Fix]:
    """The fix for frequencies the candidate computes in forward, or none where every one it computes is the
    reference's. ids (B, T): one forward of the candidate on them shows what it computes."""
    ref = Rotary.of(reference)
    if ref is None:
        return []
    watch = Frequencies()
    try:
        with torch.no_grad(), intercept(candidate, watch):
            adapter.logits(ids)
    except (RuntimeError, ValueError, IndexError, TypeError):
        return []
    wrong = [Computed(name, f) for name, f in watch.seen if not _same(f, ref.freqs)]
    if not wrong or any(w.freqs.numel() != ref.freqs.numel() for w in wrong):
        return []
    name, cause = _reading(wrong, [], ref)  # type: ignore[arg-type]  # read by .name, .freqs and .kind
    return [Fix(name, f"{cause}; computed in forward", lambda: intercept(candidate, Frequencies(ref.freqs)),
                whole_model=True)]
