"""What the weight table suspects, as fixes at the first divergence: role swaps (`swaps`) and parameters with no
counterpart (`unmatched`, `normaffine`), gathered once per comparison and offered where they lie."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .activations import Case
from .fixes import Fix
from .normaffine import MissingNormWeight
from .roles import read_roles
from .swaps import roles_of_pieces, swap_fix
from .unmatched import MissingBias, extra_parameter_fix, position_table_fix
from .weights import Piece

if TYPE_CHECKING:
    from .diagnose import Replayer


class Suspects:
    """The fixes the weight table suggests, for the candidate module at a point (`fixes(prefix)`) or at the
    embedding (`embedding_fixes`)."""

    def __init__(self, replayer: Replayer, cand_pieces: list[Piece]) -> None:
        self.replayer = replayer
        table = replayer.table
        self.ref_roles = roles_of_pieces(table, read_roles(replayer.reference))
        self.cand_roles = {p.name: p.role for p in cand_pieces}
        self.shapes = {p.param: (int(p.value.shape[0]), int(p.value.shape[1])) for p in cand_pieces}
        self.cand_values = {p.param: p.value for p in cand_pieces if p.name == p.param}
        head = replayer.cand_adapter.output_head() if table.unmatched_reference else None
        head_name = next((n for n, m in replayer.candidate.named_modules() if m is head), None) if head else None
        self.missing = MissingBias(table, replayer.ref_values, lambda name: self.shapes[name][0], head_name)
        self.norms = MissingNormWeight(table, self.ref_roles, replayer.ref_values, replayer.candidate)

    def fixes(self, prefix: str) -> list[Fix]:
        r = self.replayer
        found = [swap_fix(r.table, prefix, r.ref_values, self.ref_roles, r.patcher, self.cand_values),
                 self.missing.fix(r.candidate, prefix),
                 extra_parameter_fix(r.table, prefix, self.cand_roles, self.shapes, r.patcher),
                 self.norms.fix(prefix)]
        return [f for f in found if f is not None]

    def embedding_fixes(self, embedding: str, case: Case) -> list[Fix]:
        r = self.replayer
        fix = position_table_fix(r.table, self.ref_roles, r.ref_values, r.candidate, embedding, case)
        return [fix] if fix is not None else []
