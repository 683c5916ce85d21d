"""What one call of `torch.nn.functional.scaled_dot_product_attention` computes, recomputed on demand.

`SdpaCall` holds a call's queries, keys, mask, causal flag and scale, and gives its scaled, masked scores and
softmax probabilities (float32, for the batch and query rows asked) without changing the call itself; the
observation layer (`workbench.lm.observe`) reports calls as `SdpaCall`s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


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

    def scores(self, batch: Sequence[int] | None = None, rows: torch.Tensor | None = None, *,
               detach: bool = True) -> torch.Tensor:
        """Scaled, masked pre-softmax scores (b, H, t, S) in float32 for batch rows `batch` and query rows
        `rows` (all by default); masked keys are -inf. `detach=False` keeps the graph to q and k (an edited
        call computed from them)."""
        q, k = (self.query.detach(), self.key.detach()) if detach else (self.query, self.key)
        folded = q.dim() == 3
        if folded:  # (N, T, D): one head
            q, k = q.unsqueeze(1), k.unsqueeze(1)
        if batch is not None:
            q, k = q[list(batch)], k[list(batch) if k.shape[0] > 1 else [0] * len(batch)]
        if rows is None and self.attn_mask is None and self.is_causal and q.dtype == k.dtype == torch.float32:
            return _causal_scores(q, k, self.effective_scale)
        if rows is not None:
            q = q.index_select(2, rows.to(q.device))
        s = grouped_matmul(q.float() * self.effective_scale, k.float().transpose(-2, -1))  # (b, H, t, S)
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

    def allowed(self) -> torch.Tensor:
        """(..., T, S) bool, True where a query may attend: the mask as booleans (an additive mask allows what
        is above its dtype's minimum / 2), or the causal triangle (bottom-right aligned, as a cached step
        needs) when `is_causal` and no mask, or everything. For rewriting a call's mask."""
        q, k, m = self.query, self.key, self.attn_mask
        if m is None:
            T, S = q.shape[-2], k.shape[-2]
            everything = torch.ones(T, S, dtype=torch.bool, device=q.device)
            return everything.tril(S - T) if self.is_causal else everything
        return m if m.dtype == torch.bool else m > torch.finfo(m.dtype).min / 2

    def allowed_keys(self) -> torch.Tensor | None:
        """(S,) bool: keys some query may attend to under the mask (None without a mask)."""
        if self.attn_mask is None:
            return None
        allowed = self.allowed().detach()
        return allowed.reshape(-1, allowed.shape[-1]).any(0)


def grouped_matmul(a: torch.Tensor, b: torch.Tensor, add: torch.Tensor | None = None,
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
    return grouped_matmul(q, k.transpose(-2, -1), add=mask, alpha=scale)
