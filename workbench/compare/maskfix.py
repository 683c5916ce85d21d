"""Fixes for masks built outside the attention module: replace the mask where it enters the attention.

Many ports build the attention mask once, in the model's forward or a helper (gpt-fast slices a preallocated
causal buffer by `input_pos`), and pass it to every attention module. When it is shifted, transposed or built
without the padding, the SDPA mask fixes (`fixes.function_fixes`) do not reach it: they assume the queries are
the last T of S keys, which a preallocated cache (S its capacity) breaks. Here the mask is replaced where it
enters the attention module, by an input edit on the interception layer: the mask-like argument (bool, or
additive float with 0 and a large negative; shaped (T, S), (B, T, S), (1, 1, T, S) or (B, 1, T, S)) is
rewritten in its own format and polarity with the reference's convention: query i of a call that starts at
position `start` sees key slots 0..start+i, minus the case's padding keys (a query left with no key sees all of
them, so padding rows stay finite; they are never compared). Where no mask argument can be seen (the mask is
made inside from a flag, `is_causal`), the attention's SDPA calls get that mask instead.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..lm.intercept import Client, FunctionCall, ModuleCall, intercept
from ..lm.sdpa_call import sdpa_arguments
from .activations import Case
from .fixes import Fix
from .record import Call, main_input


@dataclass(frozen=True)
class Convention:
    """The reference's mask in one case: causal over key slots from `start`, minus the padding keys."""

    start: int  # the first query's position (the cache length before the call)
    keys: torch.Tensor | None  # (B, N) 1 = token over the positions so far; None when nothing is padded

    @classmethod
    def of(cls, case: Case) -> Convention:
        padded = case.mask is not None and not bool(case.mask.all())
        return cls(case.prefix, case.mask if padded else None)

    @property
    def padded(self) -> bool:
        return self.keys is not None

    def allowed(self, B: int, T: int, S: int, device: torch.device) -> torch.Tensor:
        """(B, T, S) bool, True = may attend."""
        q = torch.arange(self.start, self.start + T, device=device)
        allowed = (torch.arange(S, device=device)[None, :] <= q[:, None]).expand(B, T, S)  # (B, T, S)
        if self.keys is not None:
            keys = torch.ones(B, S, dtype=torch.bool, device=device)
            n = min(S, self.keys.shape[1])
            keys[:, :n] = self.keys[:, :n].bool().to(device)
            allowed = allowed & keys[:, None, :]
        return allowed | ~allowed.any(-1, keepdim=True)

    def real_queries(self, B: int, T: int) -> torch.Tensor:
        """(B, T) bool: the query rows that are tokens (the only ones compared)."""
        if self.keys is None or self.keys.shape[1] < self.start + T:
            return torch.ones(B, T, dtype=torch.bool)
        return self.keys[:, self.start: self.start + T].bool().cpu()


def _is_mask(x: Any, T: int) -> bool:
    if not isinstance(x, torch.Tensor) or x.dim() not in (2, 3, 4) or x.shape[-2] != T or x.shape[-1] < T:
        return False
    if x.dtype == torch.bool:
        return True
    if not x.is_floating_point():
        return False
    low = x <= torch.finfo(x.dtype).min / 2
    return bool(low.any()) and bool(((x == 0) | low).all())


def mask_argument(args: tuple, kwargs: dict) -> tuple[int | str, torch.Tensor, torch.Tensor] | None:
    """(position or keyword, mask, main input (B, T, C)) of an attention call's mask-like argument."""
    found = main_input(args, kwargs)
    if found is None or found[1].dim() != 3:
        return None
    where, x = found
    named: list[tuple[int | str, Any]] = [*enumerate(args), *kwargs.items()]
    for key, value in named:
        if key != where and _is_mask(value, x.shape[1]):
            return key, value, x
    return None


@dataclass(frozen=True)
class MaskFormat:
    """How a candidate writes its mask: bool (True = allowed, or True = hidden) or additive float."""

    dtype: torch.dtype
    true_allows: bool
    fill: float  # an additive mask's value for a hidden key

    @classmethod
    def of(cls, mask: torch.Tensor, start: int) -> MaskFormat:
        """Polarity by vote: every causal convention lets query i see its own slot (start + i) and slot 0."""
        if mask.dtype != torch.bool:
            low = float(mask.min())
            return cls(mask.dtype, True, low if low < 0 else torch.finfo(mask.dtype).min)
        m = _batched(mask)  # (b, T, S)
        T, S = m.shape[1], m.shape[2]
        votes = [m[:, i, j] for i in range(T) for j in {0, start + i} if j < S]
        agree, total = sum(int(v.sum()) for v in votes), sum(v.numel() for v in votes)
        return cls(torch.bool, agree * 2 >= total, 0.0)

    def allowed(self, mask: torch.Tensor) -> torch.Tensor:
        """The candidate's mask as (b, T, S) bool, True = may attend."""
        m = _batched(mask)
        if self.dtype == torch.bool:
            return m if self.true_allows else ~m
        return m > torch.finfo(m.dtype).min / 2

    def written(self, allowed: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """allowed (B, T, S) in the candidate's format, dims and device."""
        if like.dim() == 2:
            out = allowed[0] if allowed.shape[0] == 1 else allowed[:, None]
        elif like.dim() == 3:
            out = allowed
        else:
            out = allowed[:, None].expand(-1, like.shape[1], -1, -1)
        out = out.to(like.device)
        if self.dtype == torch.bool:
            return out if self.true_allows else ~out
        return torch.zeros(out.shape, dtype=self.dtype, device=like.device).masked_fill(~out, self.fill)


def _batched(mask: torch.Tensor) -> torch.Tensor:
    """(T, S), (b, T, S) or (b, h, T, S) as (b, T, S) (the first head: masks are shared across heads)."""
    if mask.dim() == 2:
        return mask[None]
    return mask if mask.dim() == 3 else mask[:, 0]


class MaskArgument(Client):
    """An input editor of one attention module: its mask argument rewritten with the reference's convention."""

    def __init__(self, module: str, convention: Convention) -> None:
        self.modules, self.convention = (module,), convention

    def module_input(self, call: ModuleCall) -> tuple[tuple, dict[str, Any]] | None:
        found = mask_argument(call.args, call.kwargs)
        if found is None:
            return None
        key, mask, x = found
        B, T, S = x.shape[0], mask.shape[-2], mask.shape[-1]
        reference = self.convention.allowed(B, T, S, torch.device("cpu"))
        if not self.convention.padded and bool((reference == reference[:1]).all()):
            reference = reference[:1]
        new = MaskFormat.of(mask.detach().cpu(), self.convention.start).written(reference, mask)
        args, kwargs = list(call.args), dict(call.kwargs)
        if isinstance(key, int):
            args[key] = new
        else:
            kwargs[key] = new
        return tuple(args), kwargs


class SdpaMask(Client):
    """A function editor: every SDPA call made inside the module gets the reference's convention as its mask."""

    functions = ("scaled_dot_product_attention",)

    def __init__(self, convention: Convention) -> None:
        self.convention = convention

    def function(self, call: FunctionCall) -> Any:
        kw = sdpa_arguments(call.args, call.kwargs)
        q, k = kw["query"], kw["key"]
        allowed = self.convention.allowed(q.shape[0], q.shape[-2], k.shape[-2], q.device)  # (B, T, S)
        return call.proceed(**{**kw, "attn_mask": allowed[:, None] if q.dim() == 4 else allowed,
                               "is_causal": False})


def _describe(cand: torch.Tensor, ref: torch.Tensor, rows: torch.Tensor, convention: Convention) -> str:
    """What the candidate's allowed (b, T, S) does differently from the reference's (B, T, S) on real rows."""
    cand, keys, start = cand.expand_as(ref), convention.keys, convention.start
    extra, missing = cand & ~ref & rows[..., None], ref & ~cand & rows[..., None]
    if keys is not None and not bool(missing.any()):
        pads = torch.zeros(ref.shape[0], ref.shape[2], dtype=torch.bool)
        n = min(ref.shape[2], keys.shape[1])
        pads[:, :n] = ~keys[:, :n].bool().cpu()
        if bool((extra & ~pads[:, None, :]).sum() == 0):
            return "the candidate's mask ignores the padding: queries attend to padded positions"
    slots, own = torch.arange(ref.shape[2])[None, :], (start + torch.arange(ref.shape[1]))[:, None]  # (1, S), (T, 1)
    if bool(missing.any()) and bool((extra & (slots > own)).any()):
        return "the candidate's mask is transposed: queries see later positions and not the earlier ones"
    if bool(extra.any()) and not bool(missing.any()):
        if not bool((extra & (slots != own + 1)).any()):
            return "the candidate's mask is shifted by one: each query also sees the next position"
        return "the candidate's mask lets queries see later positions"
    return "the candidate's mask hides positions the reference's causal mask allows"


def mask_fixes(model: nn.Module, module: str, call: Call | None, case: Case) -> list[Fix]:
    """The attention's mask argument rewritten with the reference's convention, when the candidate's differs
    from it on the compared rows; with no mask argument, its SDPA calls given that mask."""
    convention = Convention.of(case)
    what = "causal + padding" if convention.padded else "causal"
    if call is None:
        return []
    found = mask_argument(call.args, call.kwargs)
    rule = f"query i at position {convention.start} + i sees keys 0..{convention.start} + i"
    made = ("the mask the candidate's attention makes inside (from a flag such as is_causal) is not " if found
            is None else "the candidate's attention is given the right mask but its SDPA calls do not use it; "
            "theirs is not ")
    inside = [Fix(f"SDPA mask: {what} by position", f"{made}{what} by position ({rule})",
                  Opening(model, SdpaMask(convention)))]
    if found is None:  # made inside, from a flag: the SDPA mask fixes cover all but a cached step's
        return inside if case.prefix else []
    _, mask, x = found
    B, T, S = x.shape[0], mask.shape[-2], mask.shape[-1]
    reference = convention.allowed(B, T, S, torch.device("cpu"))
    fmt = MaskFormat.of(mask.detach().cpu(), convention.start)
    cand = fmt.allowed(mask.detach().cpu())
    rows = convention.real_queries(B, T)
    if cand.shape[0] not in (1, B):
        return []
    if bool(((cand.expand_as(reference) == reference) | ~rows[..., None]).all()):
        return inside  # the right mask is passed: if it is ignored, the SDPA calls are where to fix it
    cause = _describe(cand, reference, rows, convention) + f" (the mask `{module}` is given)"
    return [Fix(f"attention mask: {what}", cause, Opening(model, MaskArgument(module, convention)))]


class Opening:
    """A Fix's `apply`: opens an interception of `model` by `client` each time it is called."""

    def __init__(self, model: nn.Module, client: Client) -> None:
        self.model, self.client = model, client

    def __call__(self) -> AbstractContextManager[Any]:
        return intercept(self.model, self.client)
