"""Block output statistics and the largest logit, accumulated on the device by one observer of the forward.

A client of `workbench.lm.intercept`: it names the blocks (from `ModelAdapter.blocks()`) and the root module,
and reads each output once per step (a block's first call: gradient checkpointing runs it again in the
backward). Each block gives RMS, max |x| and the count of non-finite values, (3,) float32 on the device;
nothing is read back to the host here.
"""

from __future__ import annotations

import torch

from ..errors import ModelContractError
from ..lm import extract_logits
from ..lm.intercept import Client, ModuleCall


def first_tensor(out: object) -> torch.Tensor | None:
    """The output's first floating tensor: the tensor itself, or the first of a tuple, list or dict."""
    if isinstance(out, torch.Tensor):
        return out if out.is_floating_point() else None
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        for item in out:
            found = first_tensor(item)
            if found is not None:
                return found
    return None


def tensor_stats(x: torch.Tensor) -> torch.Tensor:
    """(rms, max |x|, non-finite count) of `x`, float32 (3,) on its device, without a host sync."""
    x = x.detach()
    lo, hi = torch.aminmax(x)
    rms = torch.linalg.vector_norm(x, dtype=torch.float32) / max(1, x.numel()) ** 0.5
    bad = x.numel() - torch.isfinite(x).sum()
    return torch.stack([rms, torch.maximum(-lo, hi).float(), bad.float()])


class ActivationProbe(Client):
    """Per step: `stats` (L, 3) of the L blocks' outputs (NaN rows for a block that did not run) and
    `max_logit`, the largest |logit| of the root's output (None when it returned no logits)."""

    def __init__(self, blocks: list[str], logits: bool) -> None:
        self.blocks = blocks
        self.index = {name: i for i, name in enumerate(blocks)}
        self.modules = [*blocks, ""] if logits else list(blocks)
        self.rows: list[torch.Tensor | None] = [None] * len(blocks)
        self.max_logit: torch.Tensor | None = None

    def reset(self) -> None:
        self.rows = [None] * len(self.blocks)
        self.max_logit = None

    def module_output(self, call: ModuleCall) -> None:
        if call.call != 0:
            return None
        with torch.no_grad():
            if call.name == "":
                self.max_logit = _max_logit(call.output)
                return None
            x = first_tensor(call.output)
            if x is not None:
                self.rows[self.index[call.name]] = tensor_stats(x)
        return None

    def stats(self) -> torch.Tensor | None:
        """(L, 3) float32: rms, max |x|, non-finite count per block; None when no block ran."""
        done = [r for r in self.rows if r is not None]
        if not done:
            return None
        nan = torch.full((3,), float("nan"), device=done[0].device)
        return torch.stack([r if r is not None else nan for r in self.rows])


def _max_logit(out: object) -> torch.Tensor | None:
    try:
        logits = extract_logits(out)
    except ModelContractError:
        return None
    lo, hi = torch.aminmax(logits.detach())
    return torch.maximum(-lo, hi).float()
