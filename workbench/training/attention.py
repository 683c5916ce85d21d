"""Attention entropy and max score per block and head, from the observation layer (`workbench.lm.observe`).

A listener in an `intercept` scope: SDPA calls are recomputed as probabilities (float32; SDPA never
materialises them, which is why this metric has its own cadence), hand-written 4-D softmaxes are read as
they are. The block that owns a call is the innermost running module's enclosing block. Per block and head:
the mean over batch and queries of the entropy of the query's key distribution (nats), and the largest
pre-softmax score (masked keys excluded). Values stay on the device.
"""

from __future__ import annotations

import torch

from ..lm.intercept import Client, Interception
from ..lm.sdpa_call import SdpaCall


class AttentionProbe(Client):
    """Per step: `entropy` and `max_score`, each (L, H) float32 on the device (NaN for a block not seen)."""

    def __init__(self, blocks: list[str]) -> None:
        self.blocks = blocks
        self.scope: Interception | None = None  # set once the intercept scope is open
        self.seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def reset(self) -> None:
        self.seen = {}

    def _block(self) -> int | None:
        current = self.scope.current if self.scope is not None else None
        if current is None:
            return None
        for i, name in enumerate(self.blocks):
            if current == name or current.startswith(name + "."):
                return i
        return None

    def on_sdpa(self, call: SdpaCall) -> None:
        i = self._block()
        if i is None or i in self.seen or call.query.dim() != 4:
            return
        with torch.no_grad():
            scores = call.scores()  # (B, H, T, S) float32, masked keys -inf
            probs = torch.softmax(scores, dim=-1).nan_to_num_(nan=0.0)
            self.seen[i] = _head_stats(scores, probs)

    def on_softmax(self, scores: torch.Tensor, probs: torch.Tensor) -> None:
        i = self._block()
        if i is None or i in self.seen:
            return
        with torch.no_grad():
            self.seen[i] = _head_stats(scores.detach().float(), probs.detach().float())

    def on_folded_softmax(self, scores: torch.Tensor, probs: torch.Tensor) -> None:
        self.on_softmax(scores, probs)

    def values(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(entropy, max_score), each (L, H); None when no attention was seen or heads differ per block."""
        if not self.seen:
            return None
        heads = {e.shape[0] for e, _ in self.seen.values()}
        if len(heads) != 1:
            return None
        H = heads.pop()
        first = next(iter(self.seen.values()))[0]
        ent = torch.full((len(self.blocks), H), float("nan"), device=first.device)
        top = ent.clone()
        for i, (e, m) in self.seen.items():
            ent[i], top[i] = e.to(ent.device), m.to(ent.device)
        return ent, top


def _head_stats(scores: torch.Tensor, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropy (H,) averaged over batch and queries, and max score (H,) (NaN ignored), of (B, H, T, S) tensors."""
    ent = torch.special.entr(probs).sum(-1).mean(dim=(0, 2))  # (B, H, T) -> (H,)
    return ent, scores.masked_fill(torch.isnan(scores), float("-inf")).amax(dim=(0, 2, 3))
