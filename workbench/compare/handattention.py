"""Attention written by hand, recognised on the interception layer: the calls that make one attention.

A port that writes attention out (nanoGPT: `att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))`, a
mask fill, `F.softmax(att, dim=-1)`, dropout, `y = att @ v`; HF's eager path alike) never calls SDPA, so a fix
that rewrites SDPA's arguments cannot reach it. `HandAttention` is a `function` client of
`workbench.lm.intercept` that follows those calls by the tensors they pass along:

- the score matmul: a matmul of two batched operands q (..., T, D) x k^T (..., D, S) starts a chain;
- every call that takes the chain's tensor and returns one of the same trailing shape (..., T, S) continues it:
  a scale (times or over a number), a mask (`masked_fill`, `where`, an added or multiplied tensor), a cast,
  dropout;
- `softmax` over the chain's tensor turns scores into probabilities;
- the value matmul: the probabilities (..., T, S) x v (..., S, D) closes the chain (one attention `seen`).

`torch.einsum` counts as a matmul where its equation is one: "bhtd,bhsd->bhts" (q's last index contracted with
k's, the output's last two indices q's rows and k's) scores, and the probabilities as its first operand close the
chain. A softmax written out (`e = exp(x - x.amax(-1, keepdim=True))`, `e / e.sum(-1, keepdim=True)`, with or
without the max) counts as one softmax over the sum's axis: its logits are the exp's input before the max was
subtracted, and the division is where a fix changes the probabilities (`at_softmax` is handed the logits and the
axis as a softmax call would be).

The steps are methods (`at_scores`, `at_softmax`, `at_probs_mask`: not `on_*`, the interception layer's
attention listener events) that keep the call as it is; the fixes in
`handfixes` are subclasses that change one step each. Nothing here runs outside an interception.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..lm.intercept import ALL_FUNCTIONS, Client, FunctionCall

MATMULS = frozenset({"matmul", "__matmul__", "bmm", "einsum"})
PEAKS = frozenset({"amax", "max"})
DIVISIONS = frozenset({"__truediv__", "div", "true_divide"})
MASKS = frozenset({"masked_fill", "masked_fill_", "where", "__add__", "add", "__iadd__", "add_", "__mul__", "mul",
                   "__imul__", "mul_"})
SCALES = frozenset({"__mul__", "mul", "__imul__", "mul_", "__truediv__", "div", "__itruediv__", "div_"})


@dataclass
class Chain:
    """One attention being computed: its scores as they pass from call to call."""

    D: int  # the head dim: q's last dimension
    current: torch.Tensor  # the latest tensor of the chain (..., T, S)
    unmasked: torch.Tensor  # the scores before any mask was applied (scaled, cast)
    masked: bool = False
    logits: torch.Tensor | None = None  # the softmax's input
    dim: int = -1  # the softmax's axis
    softmaxed: bool = False
    peak_of: torch.Tensor | None = None  # the tensor whose max was taken (a written-out softmax's shift)
    shifted: tuple[torch.Tensor, torch.Tensor] | None = None  # (x - max, x)
    exp: torch.Tensor | None = None  # a written-out softmax's numerator exp(x)
    sum_dim: int = -1  # the axis its denominator sums over


def softmax_dim(call: FunctionCall) -> int:
    """The axis a softmax call normalizes over (F.softmax and Tensor.softmax: the second argument or `dim`)."""
    dim = call.kwargs.get("dim", call.args[1] if len(call.args) > 1 else -1)
    return int(dim) if dim is not None else -1


def replaced(args: tuple, old: torch.Tensor, new: torch.Tensor) -> tuple:
    """args with the tensor `old` (by identity) replaced by `new`."""
    return tuple(new if a is old else a for a in args)


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) or (isinstance(x, torch.Tensor) and x.numel() == 1)


class HandAttention(Client):
    """Follows hand-written attention through the calls it makes (see the module docstring); `seen` counts the
    attentions completed. As it is, an observer: every step proceeds unchanged."""

    functions = ALL_FUNCTIONS

    def __init__(self) -> None:
        self.chain: Chain | None = None
        self.seen = 0

    def function(self, call: FunctionCall) -> Any:
        chain = self.chain
        if call.name in MATMULS and len(call.args) >= 2:
            a, b = operands(call)
            if chain is not None and chain.softmaxed and a is chain.current:
                self.chain, self.seen = None, self.seen + 1
                return call.proceed()
            if _scores_operands(a, b, call.name == "einsum") and (
                    call.name != "einsum" or _einsum_scores(call.args[0])):
                out = self.at_scores(call, a.shape[-1])
                self.chain = Chain(a.shape[-1], out, out) if isinstance(out, torch.Tensor) else None
                return out
            return call.proceed()
        if chain is None or not any(a is chain.current for a in call.args):
            return call.proceed()
        return self._step(call, chain)

    def _step(self, call: FunctionCall, chain: Chain) -> Any:
        name, x = call.name, chain.current
        others = [a for a in call.args if a is not x]
        if name == "softmax":
            chain.logits, chain.dim = x, softmax_dim(call)
            out = self.at_softmax(call, chain)
            chain.softmaxed = True
        elif not chain.softmaxed and (name in PEAKS or name == "exp" or name == "sum" and x is chain.exp):
            out = self._written_softmax_part(call, chain)
        elif chain.exp is not None and x is chain.exp and name in DIVISIONS and others and not _number(others[0]):
            out = self._written_softmax(call, chain)
        elif chain.softmaxed and name in MASKS and not all(_number(a) for a in others):
            out = self.at_probs_mask(call, chain)
        elif name in SCALES and others and all(_number(a) for a in others):
            out = call.proceed()
        elif name in MASKS and not chain.softmaxed:
            if name.endswith("_") or name.startswith("__i"):  # in place: keep the scores before the mask
                chain.unmasked = x.clone()
            out = call.proceed()
            chain.masked = True
        else:
            out = call.proceed()
            if name in ("__sub__", "sub") and chain.peak_of is x and isinstance(out, torch.Tensor):
                chain.shifted = (out, x)
        if isinstance(out, torch.Tensor) and out.dim() == x.dim() and out.shape[-2:] == x.shape[-2:]:
            chain.current = out
            if not chain.masked and not chain.softmaxed:
                chain.unmasked = out
        return out

    def _written_softmax_part(self, call: FunctionCall, chain: Chain) -> Any:
        """The max, the exp and the sum of a softmax written out: recorded, computed as the candidate does."""
        x, out = chain.current, call.proceed()
        if call.name in PEAKS:
            chain.peak_of = x
        elif call.name == "exp":
            shifted = chain.shifted
            chain.logits = shifted[1] if shifted is not None and shifted[0] is x else x
            chain.exp = out
        else:
            chain.sum_dim = softmax_dim(call)
        return out

    def _written_softmax(self, call: FunctionCall, chain: Chain) -> Any:
        """exp(x) / sum: the softmax of the logits over the sum's axis. A step that changes the softmax gets it as a
        softmax call; otherwise the candidate's division runs as it is."""
        chain.dim, chain.softmaxed = chain.sum_dim, True
        if type(self).at_softmax is HandAttention.at_softmax or chain.logits is None:
            return call.proceed()
        written = WrittenSoftmax(chain.shifted is not None and chain.logits is chain.shifted[1])
        chain.current = chain.logits
        return self.at_softmax(FunctionCall("softmax", written, (chain.logits, chain.dim), {}, call.module, []), chain)

    # --- the steps a fix may change -----------------------------------------------------------------------
    def at_scores(self, call: FunctionCall, D: int) -> Any:
        """The score matmul q @ k^T: (..., T, S)."""
        return call.proceed()

    def at_softmax(self, call: FunctionCall, chain: Chain) -> Any:
        """The softmax of the chain's (masked) scores."""
        return call.proceed()

    def at_probs_mask(self, call: FunctionCall, chain: Chain) -> Any:
        """A mask applied to the probabilities, after the softmax."""
        return call.proceed()


class WrittenSoftmax:
    """The candidate's own written-out softmax, for a fix to call on changed logits: exp(x - max) / sum, or
    exp(x) / sum where it subtracts no max (so a fix keeps its arithmetic, overflow included, and a stable
    softmax is never mistaken for the cause)."""

    def __init__(self, shifted: bool) -> None:
        self.shifted = shifted

    def __call__(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        e = torch.exp(x - x.amax(dim, keepdim=True)) if self.shifted else torch.exp(x)
        return e / e.sum(dim, keepdim=True)


def operands(call: FunctionCall) -> tuple[Any, Any]:
    """The two tensors a matmul multiplies (einsum: after its equation, or in a list)."""
    if call.name != "einsum":
        return call.args[0], call.args[1]
    rest = call.args[1:]
    if len(rest) == 1 and isinstance(rest[0], (list, tuple)):
        rest = tuple(rest[0])
    return (rest[0], rest[1]) if len(rest) == 2 else (None, None)


def _einsum_scores(equation: Any) -> bool:
    """An einsum equation that computes q @ k^T: q's last index contracted with k's last, the output ending in
    q's second-to-last index then k's ("bhtd,bhsd->bhts", "...td,...sd->...ts")."""
    if not isinstance(equation, str) or "->" not in equation:
        return False
    inputs, out = equation.replace(" ", "").replace("...", "").split("->")
    sides = inputs.split(",")
    if len(sides) != 2 or min(len(sides[0]), len(sides[1]), len(out)) < 2:
        return False
    qs, ks = sides
    return qs[-1] == ks[-1] and qs[-1] not in out and out[-2:] == qs[-2] + ks[-2]


def _scores_operands(a: Any, b: Any, einsum: bool = False) -> bool:
    """q (..., T, D) and k^T (..., D, S) (einsum: k (..., S, D)): two batched floating tensors whose inner dims
    meet."""
    return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dim() >= 3 and b.dim() >= 3
            and a.is_floating_point() and a.shape[-1] == b.shape[-1 if einsum else -2])
