"""Parameters with no counterpart, as suspects: each unmatched tensor gives a fix tried at the first divergence.

- A reference bias the candidate lacks (a LayerNorm's, a projection's, the head's): added to the output of the
  candidate module that plays its role, found through the bias's sibling weight in the weight table (a fused
  reference weight cut into q/k/v blocks hands each candidate projection its slice of the bias).
- A candidate parameter the reference lacks: zeroed (a bias, a projection), or set to ones where it is a norm's
  scale (which removes it from the computation).
- A learned position table the candidate leaves out: its rows added to the candidate's token embedding output,
  at the positions the case counts (0.. T-1, restarting after left padding as the mask says, continued from the
  cached prefix in a cached step).

Every edit goes through the interception layer (`workbench.lm.edits.Add`, or a `Client`) or writes parameters for
one replay and restores them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..lm.edits import Add, edit
from ..lm.intercept import Client, ModuleCall, intercept
from .activations import Case, positions
from .fixes import Fix
from .roles import Role
from .swaps import Patch, Update, under, value_of
from .weights import WeightTable, split_rows


def _module(param: str) -> str:
    return param.rsplit(".", 1)[0] if "." in param else ""


class MissingBias:
    """The reference biases the candidate lacks, each placed on the candidate module that computes its role."""

    def __init__(self, table: WeightTable, ref_values: dict[str, torch.Tensor], widths: Callable[[str], int],
                 head: str | None) -> None:
        """widths: a candidate parameter's rows in Linear layout (its module's output width).
        head: the candidate's LM head module, for a head bias whose weight the candidate ties to its embedding."""
        self.additions: dict[str, torch.Tensor] = {}  # candidate module -> vector (width,) added to its output
        self.names: list[str] = []
        for name in table.unmatched_reference:
            base, _ = split_rows(name)
            if not base.endswith("bias"):
                continue
            sibling = base[: -len("bias")] + "weight"
            bias = value_of(name, ref_values).reshape(-1)
            for m in table.matches:
                ref_base, ref_rows = split_rows(m.reference)
                if ref_base != sibling:
                    continue
                cand, rows = split_rows(m.candidate)
                a, b = ref_rows or (0, bias.shape[0])
                target, width = _module(cand), widths(cand)
                if m.reference_role.part == "LM head" and m.candidate_role.part == "token embedding":
                    if head is None:
                        continue
                    target = head
                start = rows[0] if rows else 0
                vector = self.additions.setdefault(target, torch.zeros(width))
                if start + b - a <= vector.shape[0]:
                    vector[start:start + b - a] += bias[a:b]
                    self.names += [] if name in self.names else [name]

    def fix(self, candidate: nn.Module, prefix: str) -> Fix | None:
        adds = [Add(target, vector) for target, vector in self.additions.items() if under(target, prefix)]
        if not adds:
            return None
        where = ", ".join(f"`{a.module}`" for a in adds[:3]) + (" ..." if len(adds) > 3 else "")
        cause = (f"the candidate leaves out the reference's bias ({', '.join(self.names[:3])}"
                 f"{' ...' if len(self.names) > 3 else ''}): added to the output of {where}, the gap closes")
        return Fix("add missing bias", cause, lambda: edit(candidate, *adds))


def extra_parameter_fix(table: WeightTable, prefix: str, roles: dict[str, Role], shapes: dict[str, tuple[int, int]],
                        patch: Patch) -> Fix | None:
    """"zero extra parameter": every candidate parameter under `prefix` that the reference lacks, zeroed (a norm's
    scale set to ones). shapes: each candidate parameter's (rows, cols) in Linear layout."""
    updates: list[Update] = []
    names = []
    for name in table.unmatched_candidate:
        base, _ = split_rows(name)
        if not under(base, prefix) or base not in shapes:
            continue
        rows, cols = shapes[base]
        role = roles.get(base)
        scale = role is not None and role.part.endswith("norm") and role.kind == "weight"
        updates.append((base, (0, rows), (torch.ones if scale else torch.zeros)(rows, cols)))
        names.append(f"`{base}`")
    if not updates:
        return None
    cause = (f"the candidate has parameters the reference lacks ({', '.join(names[:3])}"
             f"{' ...' if len(names) > 3 else ''}); without them the gap closes")
    return Fix("zero extra parameter", cause, patch(updates))


class AddPositions(Client):
    """An editor of the token embedding's output (B, T, C): plus the position table's rows at the case's positions.
    Counts the positions its calls have covered, so a cached case's step continues after the prefix."""

    def __init__(self, module: str, table: torch.Tensor, mask: torch.Tensor) -> None:
        self.modules = (module,)
        self.table = table  # (P, C)
        self.positions = positions(mask)  # (B, T_total)
        self.seen = 0

    def module_output(self, call: ModuleCall) -> torch.Tensor | None:
        x = call.output
        if not isinstance(x, torch.Tensor) or x.dim() != 3:
            return None
        T = x.shape[1]
        pos = self.positions[:, self.seen:self.seen + T].to(x.device)  # (B, T)
        self.seen += T
        return x + self.table.to(x.device, x.dtype)[pos]


def position_table_fix(table: WeightTable, ref_roles: dict[str, Role], ref_values: dict[str, torch.Tensor],
                       candidate: nn.Module, embedding: str, case: Case) -> Fix | None:
    """"add position table": the reference's learned position table, which the candidate leaves out, added at the
    candidate's embedding output `embedding` (a module name)."""
    name = next((n for n in table.unmatched_reference if ref_roles.get(n, Role()).part == "position table"), None)
    if name is None:
        return None
    values = ref_values[name]
    mask = case.mask if case.mask is not None else torch.ones_like(case.ids)
    cause = (f"the candidate leaves out the reference's learned position table `{name}`: added to its token "
             "embeddings, the gap closes")
    return Fix("add position table", cause, lambda: intercept(candidate, AddPositions(embedding, values, mask)),
               whole_model=True)
