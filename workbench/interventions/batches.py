"""Which cells of a patching sweep run together: the batches, and what each costs.

A cell (l, p) is one patched run: block l's activation at position p (or head p) replaced. Run in a batch
whose rows are sorted by layer (`wave`), block j computes only the rows patched below it, and in a causal
model a batch whose cells all sit at position s or later computes positions s..T-1 only, on the corrupted
run's cache of positions 0..s-1 (`workbench.lm.prefix`). So a batch of cells costs, in row-positions,

    BATCH_COST + sum over the blocks j it runs of (CALL_COST + n_j * (T - s)),

with n_j its rows computed at block j and s its first position. `CALL_COST` is what one more block call costs
whatever its rows (the weights read once more, the calls between operators): on SmolLM2 on 2 CPU threads a
block of one 14-token row takes 3.5 ms and each further row-position about 0.065 ms, so about 30 row-positions.
`BATCH_COST` is one more model call (the embedding, the masks, the cache fork, the head's rows). Cells of one
position share everything but their layer; cells of nearby positions can share a batch that starts at the
first of them. `by_position` finds the cheapest grouping of positions by dynamic programming. Without a cache
to fork (head cells, or a model whose cache cannot be), every batch runs from position 0: `by_rows` when
blocks run only the rows a patch has reached, `by_layer` when every row runs from the batch's first patched
block on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .wave import active_rows

__all__ = ["BATCH_COST", "CALL_COST", "Cell", "batch_cost", "by_layer", "by_position", "by_rows"]

CALL_COST = 32  # row-positions: one more block call (see the module docstring)
BATCH_COST = 64  # row-positions: one more model call


@dataclass(frozen=True)
class Cell:
    """One patched run: the block index and the position (or head) patched there."""

    layer: int
    column: int


def batch_cost(layers: Sequence[int], length: int, blocks: int, inclusive: bool) -> int:
    """The cost in row-positions of one batch whose rows are patched at `layers` (sorted) and run `length`
    positions each; `inclusive` as in `wave.active_rows`."""
    n = active_rows(layers, blocks, inclusive)
    return BATCH_COST + sum(CALL_COST + k * length for k in n if k)


def by_rows(cells: Sequence[Cell], most: int) -> list[tuple[int, list[Cell]]]:
    """(0, cells) batches from position 0 for blocks that run only the rows a patch has reached: the cells in
    (layer, column) order, in the fewest near-equal batches of at most `most`. Fewer batches never run more
    row-positions there (block j's rows add up across batches), and each saves a model call and its block
    calls."""
    ordered = sorted(cells, key=lambda c: (c.layer, c.column))
    return [(0, chunk) for chunk in _even(ordered, most)] if ordered else []


def by_layer(cells: Sequence[Cell], most: int) -> list[tuple[int, list[Cell]]]:
    """(0, cells) batches of one layer each, of at most `most` cells, in layer order."""
    grouped: dict[int, list[Cell]] = {}
    for c in cells:
        grouped.setdefault(c.layer, []).append(c)
    return [(0, group[i: i + most]) for _, group in sorted(grouped.items()) for i in range(0, len(group), most)]


def by_position(cells: Sequence[Cell], T: int, blocks: int, inclusive: bool, most: int
                ) -> list[tuple[int, list[Cell]]]:
    """The cheapest (start, cells) batches of position cells: runs of consecutive positions (of those swept)
    whose cells fit in `most` rows, each batch's cells sorted by (layer, position) and starting at its first
    position; a position with more than `most` cells alone is split into near-equal batches in layer order.
    Exact over such groupings, by dynamic programming over the group boundaries."""
    at: dict[int, list[Cell]] = {}
    for c in cells:
        at.setdefault(c.column, []).append(c)
    positions = sorted(at)
    groups = [sorted(at[p], key=lambda c: c.layer) for p in positions]
    m = len(positions)
    best = [0.0] + [float("inf")] * m  # best[b]: the least cost of the first b positions
    cut = [0] * (m + 1)
    for b in range(1, m + 1):
        rows = 0
        for a in range(b - 1, -1, -1):
            rows += len(groups[a])
            if rows > most and a < b - 1:
                break
            members = sorted((c for g in groups[a:b] for c in g), key=lambda c: (c.layer, c.column))
            cost = best[a] + sum(batch_cost([c.layer for c in chunk], T - positions[a], blocks, inclusive)
                                 for chunk in _even(members, most))
            if cost < best[b]:
                best[b], cut[b] = cost, a
    out: list[tuple[int, list[Cell]]] = []
    b = m
    while b > 0:
        a = cut[b]
        members = sorted((c for g in groups[a:b] for c in g), key=lambda c: (c.layer, c.column))
        out[:0] = [(positions[a], chunk) for chunk in _even(members, most)]
        b = a
    return out


def _even(cells: list[Cell], most: int) -> list[list[Cell]]:
    """`cells` in order, cut into the fewest pieces of at most `most`, of near-equal sizes."""
    pieces = -(-len(cells) // most)
    size, extra = divmod(len(cells), pieces)
    out, i = [], 0
    for k in range(pieces):
        n = size + (k < extra)
        out.append(cells[i: i + n])
        i += n
    return out
