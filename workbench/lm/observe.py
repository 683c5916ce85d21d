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
- `on_softmax(scores, probs)`: a hand-written softmax over the last dim of a 4-D (B, H, T, S) tensor.
The last two come from patching those functions while any listener needs them; the originals are restored
when the last one leaves. Calls made while a listener runs are not reported again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ..model.layers import HookPoint

SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


class AttentionListener(Protocol):
    """What `watch_attention` reports to; a listener may leave out the events it does not want."""

    def on_pattern(self, module: str, probs: torch.Tensor) -> None: ...

    def on_sdpa(self, call: SdpaCall) -> None: ...

    def on_softmax(self, scores: torch.Tensor, probs: torch.Tensor) -> None: ...


def sdpa_arguments(args: tuple, kwargs: dict) -> dict[str, Any]:
    """The arguments of one `F.scaled_dot_product_attention` call by name, however they were passed."""
    named = dict(zip(SDPA_ARGS, args))
    named.update(kwargs)
    return named


@dataclass(frozen=True)
class SdpaCall:
    """One SDPA call: q (B, H, T, D), k (B, K, S, D), with its mask, causal flag and scale."""

    query: torch.Tensor
    key: torch.Tensor
    attn_mask: torch.Tensor | None
    is_causal: bool
    scale: float | None  # as passed; None means SDPA's default 1/sqrt(D)
    enable_gqa: bool
    output: torch.Tensor | None = None  # what SDPA returned (B, H, T, Dv)
    probs: torch.Tensor | None = None  # (B, H, T, S) float32 when the call was computed from them (see above)

    @classmethod
    def from_call(cls, args: tuple, kwargs: dict, output: torch.Tensor | None = None) -> SdpaCall:
        a = sdpa_arguments(args, kwargs)
        return cls(a["query"], a["key"], a.get("attn_mask"), bool(a.get("is_causal")), a.get("scale"),
                   bool(a.get("enable_gqa")), output)

    @property
    def effective_scale(self) -> float:
        return self.query.shape[-1] ** -0.5 if self.scale is None else float(self.scale)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(B, H, T, S) of the probabilities; 3-D calls (N, T, D) count as one head."""
        q = self.query if self.query.dim() == 4 else self.query.unsqueeze(1)
        return q.shape[0], q.shape[1], q.shape[2], self.key.shape[-2]

    def unpacked(self, query_length: int) -> SdpaCall:
        """This call with one query token's heads restored, when the caller packed them: transformers feeds a
        single grouped-query token as (B, K, H/K, D) so SDPA runs on the K key heads; knowing the real query
        length (1) gives back (B, H, 1, D). Any other call is returned as it is."""
        q, k = self.query, self.key
        if query_length != 1 or q.dim() != 4 or q.shape[2] == 1 or q.shape[1] != k.shape[1]:
            return self
        B, K, n, D = q.shape
        m = self.attn_mask
        if m is not None and m.dim() == 4 and m.shape[1] == K and m.shape[2] == n:
            m = m.reshape(m.shape[0], K * n, 1, m.shape[-1])  # per-head masks were packed the same way
        p = self.probs.reshape(B, K * n, 1, -1) if self.probs is not None else None
        return SdpaCall(q.reshape(B, K * n, 1, D), k, m, self.is_causal, self.scale, True, self.output, p)

    def scores(self, batch: Sequence[int] | None = None, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Scaled, masked pre-softmax scores (b, H, t, S) in float32 for batch rows `batch` and query rows
        `rows` (all by default); masked keys are -inf."""
        q, k = self.query.detach(), self.key.detach()
        folded = q.dim() == 3
        if folded:  # (N, T, D): one head
            q, k = q.unsqueeze(1), k.unsqueeze(1)
        if batch is not None:
            q, k = q[list(batch)], k[list(batch) if k.shape[0] > 1 else [0] * len(batch)]
        if rows is None and self.attn_mask is None and self.is_causal and q.dtype == k.dtype == torch.float32:
            return _causal_scores(q, k, self.effective_scale)
        if rows is not None:
            q = q.index_select(2, rows.to(q.device))
        s = _grouped_matmul(q.float() * self.effective_scale, k.float().transpose(-2, -1))  # (b, H, t, S)
        S = s.shape[-1]
        qrows = rows.to(s.device) if rows is not None else None
        if self.attn_mask is not None:
            m = self.attn_mask.detach()
            if folded and m.dim() == 3:
                m = m.unsqueeze(1)  # (N, 1, T, S)
            while m.dim() < 4:
                m = m.unsqueeze(0)
            if batch is not None and m.shape[0] > 1:
                m = m[list(batch)]
            if m.shape[2] > 1 and qrows is not None:
                m = m.index_select(2, qrows)
            s = s.masked_fill_(~m, float("-inf")) if m.dtype == torch.bool else s.add_(m.float())
        if self.is_causal:  # SDPA aligns the causal mask to the top-left corner
            s = s.masked_fill_(_future(s.shape[2], S, qrows, s.device), float("-inf"))
        return s

    def probabilities(self, batch: Sequence[int] | None = None, rows: torch.Tensor | None = None) -> torch.Tensor:
        """softmax(scores) (b, H, t, S) in float32; a fully masked row is all zeros."""
        if self.probs is not None:  # computed in place of SDPA: a view when every row is asked for
            p = self.probs if self.probs.dim() == 4 else self.probs.unsqueeze(1)
            if batch is not None and list(batch) != list(range(p.shape[0])):
                p = p[list(batch)]
            if rows is not None and not (rows.numel() == p.shape[2] and
                                         bool((rows.cpu() == torch.arange(p.shape[2])).all())):
                p = p.index_select(2, rows.to(p.device))
            return p
        p = torch.softmax(self.scores(batch, rows), dim=-1)
        return p.nan_to_num_(nan=0.0) if self.might_mask_a_row() else p

    def might_mask_a_row(self) -> bool:
        """Whether some query row may have every key masked (its softmax is NaN, then zeros): only a
        boolean or -inf mask can do that, and SDPA's own causal mask never does."""
        m = self.attn_mask
        return m is not None and (m.dtype == torch.bool or bool(torch.isneginf(m).any()))

    def allowed_keys(self) -> torch.Tensor | None:
        """(S,) bool: keys some query may attend to under the mask (None without a mask)."""
        if self.attn_mask is None:
            return None
        m = self.attn_mask.detach()
        allowed = m if m.dtype == torch.bool else m > torch.finfo(m.dtype).min / 2
        return allowed.reshape(-1, allowed.shape[-1]).any(0)


def _grouped_matmul(a: torch.Tensor, b: torch.Tensor, add: torch.Tensor | None = None,
                    alpha: float = 1.0) -> torch.Tensor:
    """a (n, H, t, X) @ b (n, K, X, Y) -> (n, H, t, Y) where each of the K heads of b serves H/K heads of a
    in turn (grouped-query attention, as `repeat_interleave` would pair them), without copying b: a group's
    query rows are stacked against its key head. With `add` ((H/K * t, Y), broadcast over n and K) the result
    is add + alpha * a @ b in the same GEMM (`baddbmm`)."""
    n, H, t, X = a.shape
    K = b.shape[1]
    if add is None and K == H:
        return a @ b
    a3, b3 = a.reshape(n * K, (H // K) * t, X), b.reshape(n * K, X, b.shape[-1])
    out = torch.bmm(a3, b3) if add is None else torch.baddbmm(add, a3, b3, alpha=alpha)
    return out.view(n, H, t, -1)


_CAUSAL: dict[tuple, torch.Tensor] = {}  # (t, S, device) -> (t, S) bool above the diagonal, for all rows


def _future(t: int, S: int, rows: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """(t, S) bool: keys after each query row (row i of `rows`, or i itself), top-left aligned as SDPA does."""
    if rows is not None:
        return torch.arange(S, device=device)[None, :] > rows[:, None]
    key = (t, S, device)
    mask = _CAUSAL.get(key)
    if mask is None:
        if len(_CAUSAL) > 16:
            _CAUSAL.clear()
        mask = _CAUSAL[key] = torch.ones(t, S, dtype=torch.bool, device=device).triu_(1)
    return mask


_ADDITIVE: dict[tuple, torch.Tensor] = {}  # (groups, t, S, device) -> (groups * t, S) float32, -inf above the diagonal


def _causal_scores(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """scale * q k^T with SDPA's causal mask (top-left aligned) as -inf, (n, H, t, S) float32, in one
    `baddbmm`: the scale and the mask ride on the GEMM instead of two passes over the scores (on the CPU the
    mask's `masked_fill_` alone measured ~0.3 ms per SmolLM2 layer at 128 tokens)."""
    t, S, G = q.shape[2], k.shape[2], q.shape[1] // k.shape[1]
    key = (G, t, S, q.device)
    mask = _ADDITIVE.get(key)
    if mask is None:
        if len(_ADDITIVE) > 16:
            _ADDITIVE.clear()
        above = _future(t, S, None, q.device)
        mask = _ADDITIVE[key] = torch.zeros(t, S, device=q.device).masked_fill_(above, float("-inf")).repeat(G, 1)
    return _grouped_matmul(q, k.transpose(-2, -1), add=mask, alpha=scale)


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
    out = _grouped_matmul(p, value)  # (B, H, T, Dv)
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


def _wanted(call: SdpaCall) -> bool:
    """Whether some listener asks for this call's probabilities (see the module docstring)."""
    for listener in _listeners:
        ask = getattr(listener, "wants_probabilities", None)
        if ask is not None and ask(call):
            return True
    return False


def _is_attention_softmax(x: Any, dim: int | None) -> bool:
    return isinstance(x, torch.Tensor) and x.dim() == 4 and dim in (-1, 3)


def _softmax_then_dispatch(name: str, axis: int | None, *args: Any, **kwargs: Any) -> torch.Tensor:
    nested = _busy()
    out = _quiet(name, *args, **kwargs)
    if not nested and _is_attention_softmax(out, axis):
        _dispatch("on_softmax", args[0], out)
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
