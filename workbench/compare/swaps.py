"""The fix for a role swap: put back, in each candidate tensor that holds a reference tensor of another role, the
reference's tensor of the candidate tensor's own role.

A port that loads the key weight into the value projection (or gate into up, layer 1 into layer 0, the MLP's
norm into the attention's) has every tensor's twin in the reference; the weight table says so as a role finding
(`WeightMatch.role_swapped`). This fix tests that finding where it shows: the candidate's module at the first
divergence, replayed with each swapped tensor under it replaced by the reference tensor of its own role.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch

from .fixes import Fix
from .roles import Role
from .weights import WeightMatch, WeightTable, split_rows

Update = tuple[str, tuple[int, int], torch.Tensor]  # (parameter, its rows in Linear layout, the value there)
Patch = Callable[[list[Update]], Callable[[], AbstractContextManager[Any]]]


def under(name: str, prefix: str) -> bool:
    """`name` (a parameter or module) lies inside the module `prefix` ("" is the whole model)."""
    return not prefix or name == prefix or name.startswith(prefix + ".")


def reference_of_role(role: Role, roles: dict[str, Role]) -> str | None:
    """The reference piece (a parameter, or a fused row block "w[a:b]") that plays `role`."""
    return next((name for name, r in roles.items() if r.known and r == role), None)


def value_of(name: str, values: dict[str, torch.Tensor]) -> torch.Tensor:
    """A reference piece's value in Linear layout (rows, cols)."""
    base, rows = split_rows(name)
    value = values[base]
    return value if rows is None else value[rows[0]:rows[1]]


def swap_fix(table: WeightTable, prefix: str, ref_values: dict[str, torch.Tensor], ref_roles: dict[str, Role],
             patch: Patch, cand_values: dict[str, torch.Tensor] | None = None) -> Fix | None:
    """"weights: swap back" for the role findings under the module `prefix`, or None when there are none.

    ref_roles: every reference piece's role (whole parameters, and the row blocks fused tensors were cut into).
    patch: turns (parameter, rows, value) updates into a context that writes them and restores the parameter.
    cand_values: the candidate's parameters in Linear layout. Where the candidate holds the tensor a piece should
    hold in another of its pieces, that value is moved back (in the candidate's own convention: q/k rows it
    permuted for its RoPE stay permuted); otherwise the reference's tensor of the piece's role is written."""
    updates: list[Update] = []
    said: list[WeightMatch] = []
    holders = {m.reference_role: m.candidate for m in table.role_findings()}
    for m in table.role_findings():
        base, rows = split_rows(m.candidate)
        own = reference_of_role(m.candidate_role, ref_roles)
        if not under(base, prefix) or own is None:
            continue
        value, held = value_of(own, ref_values), value_of(m.reference, ref_values)
        holder = holders.get(m.candidate_role)
        if cand_values is not None and holder is not None and split_rows(holder)[0] in cand_values:
            moved = value_of(holder, cand_values).clone()  # a copy: the patch writes into that parameter
            value = moved if moved.shape == value.shape else value
        if value.shape != held.shape:
            continue
        updates.append((base, rows or (0, held.shape[0]), value))
        said.append(m)
    if not updates:
        return None
    more = f" (and {len(said) - 2} more)" if len(said) > 2 else ""
    cause = "the candidate loads tensors into the wrong places: " + "; ".join(m.role_sentence for m in said[:2]) + more
    return Fix("weights: swap back", cause, patch(updates))


def roles_of_pieces(table: WeightTable, whole: dict[str, Role]) -> dict[str, Role]:
    """The reference's roles by piece: whole parameters, and each fused row block as the table cut it."""
    out = dict(whole)
    out.update({m.reference: m.reference_role for m in table.matches if "[" in m.reference})
    return out
