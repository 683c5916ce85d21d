"""Per-module gradient norms and update ratios from fused multi-tensor ops, kept on the device.

Parameters are grouped by the module that owns them (the path before the last dot). One
`torch._foreach_norm` gives every parameter's norm; an `index_add_` sums their squares per module: two kernel
launches for any number of modules, and no host sync (the values stay on the device until a flush fetches a
batch of steps at once).
"""

from __future__ import annotations

import torch
from torch import nn


class ParamNorms:
    """The trainable parameters of a model, grouped by owning module (`modules`, in parameter order)."""

    def __init__(self, model: nn.Module) -> None:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in named]
        owners = [n.rsplit(".", 1)[0] if "." in n else "" for n, _ in named]
        self.modules = list(dict.fromkeys(owners))
        index = {m: i for i, m in enumerate(self.modules)}
        self.device = self.params[0].device if self.params else torch.device("cpu")
        self.owner = torch.tensor([index[o] for o in owners], dtype=torch.long, device=self.device)
        self._before: list[torch.Tensor] | None = None

    def _per_module(self, norms: list[torch.Tensor], which: list[int]) -> torch.Tensor:
        """Module norms (M,) float32 from per-parameter norms of the parameters `which`."""
        sq = torch.zeros(len(self.modules), dtype=torch.float32, device=self.device)
        if norms:
            stacked = torch.stack([n.to(self.device, torch.float32) for n in norms])  # (P,)
            owner = self.owner if len(which) == len(self.params) else self.owner[which]
            sq.index_add_(0, owner, stacked * stacked)
        return sq.sqrt()

    def grad_norms(self) -> torch.Tensor:
        """Gradient L2 norm per module (M,), float32 on the device; 0 for a module without gradients."""
        which = [i for i, p in enumerate(self.params) if p.grad is not None]
        grads = [self.params[i].grad for i in which]
        norms = list(torch._foreach_norm(grads)) if grads else []  # type: ignore[arg-type]  # grads are tensors
        return self._per_module(norms, which)

    def remember(self) -> None:
        """Copy the weights now (before the optimizer step), for `update_ratios` after it."""
        with torch.no_grad():
            if self._before is None:
                self._before = [p.detach().clone() for p in self.params]
            else:
                torch._foreach_copy_(self._before, [p.detach() for p in self.params])

    @property
    def remembered(self) -> bool:
        return self._before is not None

    def update_ratios(self) -> torch.Tensor:
        """|w_now - w_remembered| / |w_remembered| per module (M,): the size of the last update relative to
        the weights it changed (0 for an unchanged module)."""
        assert self._before is not None  # remember() first; the recorder keeps that order
        with torch.no_grad():
            now = [p.detach() for p in self.params]
            delta = torch._foreach_sub(now, self._before)
            which = list(range(len(self.params)))
            num = self._per_module(list(torch._foreach_norm(delta)), which)
            den = self._per_module(list(torch._foreach_norm(self._before)), which)
        return num / den.clamp_min(torch.finfo(torch.float32).tiny)
