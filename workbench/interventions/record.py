"""`PatchingResult`: what a patching sweep measured, as plain data (no tensors, no model).

Rows are layers (blocks), columns are positions or heads. `values[i][j]` is the metric of the corrupted run
with cell (i, j) patched from the clean run; `scores[i][j]` the same normalised, (patched - corrupted) /
(clean - corrupted): 0 where the patch changes nothing, 1 where it restores the clean run's metric. When
the clean and corrupted metrics are equal the normalisation is undefined and every score is NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..display import notebook_html

__all__ = ["PatchingResult"]


@dataclass
class PatchingResult:
    """One sweep: per-cell metric values and normalised scores, the two reference metrics, and the labels."""

    site: str  # "resid", "attn", "mlp", "heads" or a module name inside each block
    layers: list[int]  # the block index of each row
    layer_names: list[str]  # the patched module of each row
    columns: list[int]  # the position (or head) of each column
    column_labels: list[str]  # what each column shows: "3 ' Paris'" for a position with its token, "h2" a head
    values: list[list[float]]  # (rows, columns): the metric with that cell patched
    clean: float  # the metric of the clean run
    corrupted: float  # the metric of the corrupted run
    batched: bool = True  # whether the runs were stacked into batches (False: one forward per cell)
    notes: list[str] = field(default_factory=list)  # what the sweep had to do differently, and why

    @property
    def scores(self) -> list[list[float]]:
        """(patched - corrupted) / (clean - corrupted) per cell; NaN everywhere when clean == corrupted."""
        gap = self.clean - self.corrupted
        if gap == 0 or math.isnan(gap):
            return [[math.nan] * len(row) for row in self.values]
        return [[(v - self.corrupted) / gap for v in row] for row in self.values]

    @property
    def column_kind(self) -> str:
        return "head" if self.site == "heads" else "position"

    def top(self, k: int = 5) -> list[tuple[int, int, float]]:
        """The k cells with the largest |score| (|value - corrupted| when scores are undefined):
        (layer, column, score)."""
        scores = self.scores
        cells = [(self.layers[i], self.columns[j], scores[i][j], abs(self.values[i][j] - self.corrupted))
                 for i in range(len(self.layers)) for j in range(len(self.columns))]
        cells.sort(key=lambda c: -(c[3] if math.isnan(c[2]) else abs(c[2])))
        return [(layer, col, score) for layer, col, score, _ in cells[:k]]

    def summary(self) -> str:
        best = ", ".join(f"L{layer} {self.column_kind} {col}: {s:+.2f}" for layer, col, s in self.top(3))
        return (f"{self.site} patching, {len(self.layers)} layers x {len(self.columns)} {self.column_kind}s: clean "
                f"{self.clean:.4g}, corrupted {self.corrupted:.4g}; strongest cells {best}")

    def _repr_html_(self) -> str:
        return notebook_html(self)
