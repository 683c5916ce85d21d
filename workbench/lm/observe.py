"""The one observation layer for attention: every way a model computes attention probabilities, as events.

`watch_attention(listener, model)` is the entry point that capture, the doctor and the generation session
share. Inside it the listener sees, in call order:
- `on_pattern(module, probs)`: the workbench model's `hook_pattern` sites, probabilities (B, H, T, S)
  (hooking a site switches that layer to its eager path);
- `on_sdpa(call)`: a call of `torch.nn.functional.scaled_dot_product_attention`, as an `SdpaCall` whose
  `probabilities(...)` recomputes what SDPA never materialises (float32, for the rows asked). A listener
  that will ask for most rows may say so with `wants_probabilities(call) -> bool`: then a float32 CPU call
  without grad or dropout is computed once as softmax(scores) @ v, in place of SDPA, and the call carries
  the probabilities it used (`SdpaCall.probs`) instead of recomputing them;
- `on_softmax(scores, probs)`: a hand-written softmax over the last dim of a 4-D (B, H, T, S) tensor;
- `on_folded_softmax(scores, probs)`: one over a 3-D (N, T, T) tensor with no weight on later keys (causal
  self-attention with heads folded into N, or one module per head), as (N, 1, T, T). A 3-D softmax that is
  not causal, or a decode step's (N, 1, S), is not told apart from a router's softmax, so it is not reported.
The last two come from patching those functions while any listener needs them; the originals are restored
when the last one leaves. Calls made while a listener runs are not reported again.

Attention is also edited here, before anyone observes it: a listener with `edit_attention(shape)` (shape the
call's (B, H, T, S)) may return an `AttentionEdit`, keys knocked out of that call's scores (-inf before the
softmax: each query's other keys share its probability again) or of its probabilities (zeroed after it, no
renormalisation). A hand-written 4-D softmax is edited on its input or output; an SDPA call is given the
knocked-out keys as part of its mask, or, for probabilities, computed as softmax(scores) @ v with them zeroed.
Every listener, a trace's included, then sees the edited attention.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ..model.layers import HookPoint
from .sdpa_call import SDPA_ARGS, SdpaCall, grouped_matmul, sdpa_arguments

__all__ = ["SDPA_ARGS", "AttentionEdit", "AttentionListener", "SdpaCall", "original_sdpa", "pattern_sites",
           "sdpa_arguments", "watch_attention"]


class AttentionListener(Protocol):
    """What `watch_attention` reports to; a listener may leave out the events it does not want."""

    def on_pattern(self, module: str, probs: torch.Tensor) -> None: ...

    def on_sdpa(self, call: SdpaCall) -> None: ...

    def on_softmax(self, scores: torch.Tensor, probs: torch.Tensor) -> None: ...

    def on_folded_softmax(self, scores: torch.Tensor, probs: torch.Tensor) -> None: ...


@dataclasses.dataclass(frozen=True, eq=False)
class AttentionEdit:
    """Keys knocked out of one attention call, each a bool tensor broadcastable to the call's (B, H, T, S),
    True where a query loses a key (None: no such edit). `scores`: -inf before the softmax (renormalised);
    `probs`: zeroed after it (not renormalised)."""

    scores: torch.Tensor | None = None
    probs: torch.Tensor | None = None

    def merged(self, other: AttentionEdit) -> AttentionEdit:
        """Both edits at once: a key knocked out by either is knocked out."""
        return AttentionEdit(_either(self.scores, other.scores), _either(self.probs, other.probs))


def _either(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    return b if a is None else a if b is None else a | b


def _computes_in_place(call: SdpaCall, args: dict[str, Any]) -> bool:
    """Whether this call may be computed as softmax(scores) @ v in place of SDPA: float32 on the CPU (where
    the two agree to float32 rounding, ~1e-7 relative), 4-D, no dropout, nothing needing a gradient, and a
    mask that cannot leave a row with no key (SDPA's output for such a row is not softmax's)."""
    q, k, v = call.query, call.key, args.get("value")
    if not isinstance(v, torch.Tensor) or q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return False
    if any(t.dtype != torch.float32 or t.device.type != "cpu" for t in (q, k, v)):
        return False
    H, K = q.shape[1], k.shape[1]
    if args.get("dropout_p", 0.0) or v.shape[1] != K or H % K or (K not in (1, H) and not call.enable_gqa):
        return False  # what SDPA refuses is left to SDPA to refuse
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return False
    m = call.attn_mask
    if m is not None and (m.dtype == torch.bool and not bool(m.any(-1).all()) or
                          m.dtype != torch.bool and bool(torch.isneginf(m).all(-1).any())):
        return False
    return True


def _sdpa_in_place(call: SdpaCall, value: torch.Tensor) -> SdpaCall:
    """softmax(scores) @ v: the call with its output and the probabilities it came from (B, H, T, S)."""
    p = torch.softmax(call.scores(), dim=-1)
    out = grouped_matmul(p, value)  # (B, H, T, Dv)
    return dataclasses.replace(call, output=out, probs=p)


def pattern_sites(model: nn.Module,
                  named: Sequence[tuple[str, nn.Module]] | None = None) -> list[tuple[str, HookPoint]]:
    """The workbench model's `hook_pattern` HookPoints, each with the name of the attention module that
    owns it, in model order. `named` may pass a cached `list(model.named_modules())`."""
    sites = []
    for name, m in named if named is not None else model.named_modules():
        if name.endswith("hook_pattern") and isinstance(m, HookPoint):
            sites.append((name.rsplit(".", 1)[0] if "." in name else "", m))
    return sites


@contextlib.contextmanager
def watch_attention(listener: Any, *, intercept: bool = True,
                    patterns: Sequence[tuple[str, HookPoint]] = ()) -> Iterator[None]:
    """Report attention to `listener` inside the block: SDPA and softmax calls when `intercept`, and the
    `hook_pattern` sites in `patterns` ((owner, site) pairs from `pattern_sites`).
    Every hook and patch is removed on exit, also when the block raises."""
    handles = []
    try:
        for owner, site in patterns:
            handles.append(site.register_forward_hook(_pattern_hook(listener, owner)))
        if intercept:
            _add_listener(listener)
        yield
    finally:
        for h in handles:
            h.remove()
        if intercept:
            _remove_listener(listener)


def _pattern_hook(listener: Any, owner: str) -> Callable[..., None]:
    def hook(_m: nn.Module, _args: Any, out: torch.Tensor) -> None:
        listener.on_pattern(owner, out)

    return hook


def original_sdpa() -> Callable[..., torch.Tensor]:
    """The unpatched SDPA function (for code that must bypass observation)."""
    return _originals.get("sdpa", F.scaled_dot_product_attention)


# --- interception of F.scaled_dot_product_attention and softmax -------------------------------------

_state = threading.local()
_listeners: list[Any] = []
_originals: dict[str, Any] = {}


def _busy() -> bool:
    return getattr(_state, "busy", False)


def _dispatch(method: str, *payload: Any) -> None:
    if _busy():
        return
    _state.busy = True
    try:
        for listener in list(_listeners):
            handler = getattr(listener, method, None)
            if handler is not None:
                handler(*payload)
    finally:
        _state.busy = False


def _quiet(name: str, *args: Any, **kwargs: Any) -> Any:
    """Call an original function with observation suppressed (F.softmax calls Tensor.softmax inside)."""
    if _busy():
        return _originals[name](*args, **kwargs)
    _state.busy = True
    try:
        return _originals[name](*args, **kwargs)
    finally:
        _state.busy = False


def _sdpa(*args: Any, **kwargs: Any) -> torch.Tensor:
    if _busy():
        return _quiet("sdpa", *args, **kwargs)
    call = SdpaCall.from_call(args, kwargs)
    edit = _edit_for(call.shape, call.query.device) if call.query.dim() == 4 else None
    if edit is not None:
        return _edited_sdpa(call, sdpa_arguments(args, kwargs), edit)
    if _wanted(call):
        named = sdpa_arguments(args, kwargs)
        if _computes_in_place(call, named):
            _state.busy = True
            try:
                with torch.no_grad():
                    call = _sdpa_in_place(call, named["value"])
            finally:
                _state.busy = False
            _dispatch("on_sdpa", call)
            assert call.output is not None  # set by _sdpa_in_place
            return call.output
    out = _quiet("sdpa", *args, **kwargs)
    _dispatch("on_sdpa", dataclasses.replace(call, output=out))
    return out


def _edit_for(shape: tuple[int, ...], device: torch.device) -> AttentionEdit | None:
    """What the editors among the listeners knock out of a call shaped (B, H, T, S), merged; None for nothing."""
    edit = None
    _state.busy = True  # what an editor computes is not attention to observe or edit
    try:
        for listener in list(_listeners):
            ask = getattr(listener, "edit_attention", None)
            mine = ask(shape, device) if ask is not None else None
            if mine is not None:
                edit = mine if edit is None else edit.merged(mine)
    finally:
        _state.busy = False
    return edit


def _edited_sdpa(call: SdpaCall, named: dict[str, Any], edit: AttentionEdit) -> torch.Tensor:
    """An SDPA call with keys knocked out: through SDPA with them masked when only scores are edited, else
    as softmax(scores) @ v (in float32, cast back) with the knocked-out probabilities zeroed. Observers get
    the call as computed."""
    if edit.probs is None:
        assert edit.scores is not None  # an edit knocks something out
        named = {**named, "attn_mask": _knocked_mask(call, edit.scores), "is_causal": False}
        out = _quiet("sdpa", **named)
        _dispatch("on_sdpa", SdpaCall.from_call((), named, out))
        return out
    value: torch.Tensor = named["value"]
    _state.busy = True
    try:
        s = call.scores(detach=False)  # (B, H, T, S) float32
        if edit.scores is not None:
            s = s.masked_fill(edit.scores, float("-inf"))
        p = torch.softmax(s, dim=-1)
        if edit.scores is not None or call.might_mask_a_row():
            p = p.nan_to_num(nan=0.0)  # a query left with no key attends to nothing
        p = p.masked_fill(edit.probs, 0.0)
        dropout = float(named.get("dropout_p") or 0.0)
        if dropout:
            p = F.dropout(p, dropout)
        out = grouped_matmul(p.to(value.dtype), value)  # (B, H, T, Dv)
    finally:
        _state.busy = False
    _dispatch("on_sdpa", dataclasses.replace(call, output=out, probs=p.detach()))
    return out


def _knocked_mask(call: SdpaCall, knocked: torch.Tensor) -> torch.Tensor:
    """The call's mask (its own, and its causal flag, top-left aligned as SDPA's) with `knocked` keys masked:
    bool when the call's mask is bool or absent, else additive in the mask's dtype."""
    B, H, T, S = call.shape
    allowed = torch.ones(T, S, dtype=torch.bool, device=knocked.device).tril_() if call.is_causal else None
    m = call.attn_mask
    if m is None or m.dtype == torch.bool:
        keep = ~knocked if m is None else m & ~knocked
        return keep & allowed if allowed is not None else keep
    out = torch.where(knocked, float("-inf"), m)
    return out.masked_fill(~allowed, float("-inf")) if allowed is not None else out


def _wanted(call: SdpaCall) -> bool:
    """Whether some listener asks for this call's probabilities (see the module docstring)."""
    for listener in _listeners:
        ask = getattr(listener, "wants_probabilities", None)
        if ask is not None and ask(call):
            return True
    return False


def _softmax_event(p: Any, dim: int | None) -> str | None:
    """The event a softmax output over `dim` is reported as (see the module docstring), or None."""
    if not isinstance(p, torch.Tensor) or dim is None or p.dim() not in (3, 4) or dim not in (-1, p.dim() - 1):
        return None
    if p.dim() == 4:
        return "on_softmax"
    causal = p.shape[1] == p.shape[2] >= 2 and not bool(p.detach().triu(1).any())
    return "on_folded_softmax" if causal else None


def _softmax_then_dispatch(name: str, axis: int | None, *args: Any, **kwargs: Any) -> torch.Tensor:
    nested = _busy()
    x = args[0]
    edit = None
    if not nested and isinstance(x, torch.Tensor) and x.dim() == 4 and axis in (-1, 3):
        edit = _edit_for(tuple(x.shape), x.device)
    if edit is not None and edit.scores is not None:
        args = (x.masked_fill(edit.scores, float("-inf")), *args[1:])
    out = _quiet(name, *args, **kwargs)
    if edit is not None and edit.probs is not None:
        out = out.masked_fill(edit.probs, 0.0)
    event = None if nested else _softmax_event(out, axis)
    if event == "on_softmax":
        _dispatch(event, args[0], out)
    elif event is not None:
        _dispatch(event, args[0].unsqueeze(1), out.unsqueeze(1))
    return out


def _f_softmax(input, dim=None, _stacklevel=3, dtype=None):  # noqa: ANN001 - mirrors F.softmax
    return _softmax_then_dispatch("F.softmax", dim, input, dim=dim, _stacklevel=_stacklevel, dtype=dtype)


def _torch_softmax(input, dim, dtype=None):  # noqa: ANN001 - mirrors torch.softmax
    return _softmax_then_dispatch("torch.softmax", dim, input, dim, dtype=dtype)


def _tensor_softmax(self, dim, dtype=None):  # noqa: ANN001 - mirrors Tensor.softmax
    return _softmax_then_dispatch("Tensor.softmax", dim, self, dim, dtype=dtype)


def _install() -> None:
    _originals.update({
        "sdpa": F.scaled_dot_product_attention, "F.softmax": F.softmax,
        "torch.softmax": torch.softmax, "Tensor.softmax": torch.Tensor.softmax,
        "tensor_had_own": "softmax" in torch.Tensor.__dict__,
    })
    F.scaled_dot_product_attention = _sdpa
    F.softmax = _f_softmax
    torch.softmax = _torch_softmax  # type: ignore[assignment]  # deliberate patch of a torch-stubbed function
    torch.Tensor.softmax = _tensor_softmax  # type: ignore[method-assign]  # deliberate patch, undone by _uninstall


def _uninstall() -> None:
    F.scaled_dot_product_attention = _originals["sdpa"]
    F.softmax = _originals["F.softmax"]
    torch.softmax = _originals["torch.softmax"]
    if _originals["tensor_had_own"]:
        torch.Tensor.softmax = _originals["Tensor.softmax"]  # type: ignore[method-assign]  # restores the original
    else:
        del torch.Tensor.softmax
    _originals.clear()


def _add_listener(listener: Any) -> None:
    if not _listeners:
        _install()
    _listeners.append(listener)


def _remove_listener(listener: Any) -> None:
    if listener in _listeners:
        _listeners.remove(listener)
        if not _listeners:
            _uninstall()
