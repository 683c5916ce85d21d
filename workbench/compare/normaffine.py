"""The fix for a norm built without its affine parameters: the reference's weight (and bias) applied at the
output of the candidate's norm that plays the same role.

A port that builds `nn.LayerNorm(C, elementwise_affine=False)`, or an RMSNorm without a weight, where the
reference's norm has them, leaves the reference's norm weight with no counterpart in the weight table. A missing
weight is not a bias to add: the norm's output y (B, T, C) must become y * w + b. The candidate's norm has no
parameter to carry a role, so it is found by its place (`roles.RoleReader.norms`: its block and its part there)
and edited through the interception layer (`workbench.lm.edits.Apply`).
"""

from __future__ import annotations

import torch
from torch import nn

from ..lm.edits import Apply, edit
from .fixes import Fix
from .roles import Role, RoleReader
from .swaps import value_of
from .weights import WeightTable, split_rows


class AffineOutput:
    """y (..., C) -> y * weight + bias (bias optional): the affine step a norm without parameters leaves out."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.weight, self.bias = weight, bias

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        out = y * self.weight.to(y.device, y.dtype)
        return out if self.bias is None else out + self.bias.to(y.device, y.dtype)


class MissingNormWeight:
    """The reference norm weights (and biases) the candidate lacks, by the candidate norm that should hold them."""

    def __init__(self, table: WeightTable, ref_roles: dict[str, Role], ref_values: dict[str, torch.Tensor],
                 candidate: nn.Module) -> None:
        self.candidate = candidate
        left: dict[Role, str] = {}
        for name in table.unmatched_reference:
            role = ref_roles.get(split_rows(name)[0])
            if role is not None and role.part.endswith("norm") and role.kind in ("weight", "bias"):
                left[role] = name
        self.found: dict[str, tuple[str, str | None]] = {}  # candidate norm -> (reference weight, bias or None)
        self.values = ref_values
        if not any(r.kind == "weight" for r in left):
            return
        modules = dict(candidate.named_modules())
        for name, role in RoleReader(candidate).norms().items():
            weight = left.get(Role(role.block, role.part, "weight"))
            if weight is not None and getattr(modules[name], "weight", None) is None:
                self.found[name] = (weight, left.get(Role(role.block, role.part, "bias")))

    def fix(self, prefix: str) -> Fix | None:
        """"add missing norm weight" at the candidate norm `prefix`, or None where it keeps its own weight."""
        if prefix not in self.found:
            return None
        weight, bias = self.found[prefix]
        w = value_of(weight, self.values).reshape(-1)
        b = value_of(bias, self.values).reshape(-1) if bias is not None else None
        held = f"`{weight}`" + (f" and `{bias}`" if bias is not None else "")
        cause = (f"the candidate's norm `{prefix}` has no affine parameters; the reference's {held} applied at its "
                 "output, the gap closes")
        spec = Apply(prefix, AffineOutput(w, b))
        return Fix("add missing norm weight", cause, lambda: edit(self.candidate, spec))
