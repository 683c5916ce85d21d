"""A batch of patched runs in which each block runs only the rows a patch has reached.

Row r of a patching batch is the corrupted run with one activation replaced at block l_r. Until block l_r that
row is the corrupted run itself, which was computed once already; from there on it differs. With the rows
sorted by l_r, the rows a block j must compute are a prefix of the batch, rows [0, n_j), and n_j grows with j:
a sweep over every layer computes each block for the rows patched below it only, about half of what running
every row through every block costs, and in one call per block rather than one batch per layer.

`Wave` replaces each block's call (`Client.module_call`): it runs the block's own forward (`ModuleCall.forward`)
on rows [0, n_j) of its inputs and stacks under them the corrupted run's stored output of that block for the
other rows. The inputs' batch rows are cut by `RowCut`: every tensor argument whose first dimension is the
batch's row count. That is a model's batch dimension for the models whose cache the sweep forks (the workbench
model and transformers models: masks (B, 1, T, S), position embeddings (B, T, D), ids (B, T)); a row count
equal to a length of the run (T or S) makes that reading ambiguous, and those batches run every row. A model
whose cache is a `Cache` object gets a fork whose layer j holds n_j rows (`PromptCache.fork(layer_rows=...)`).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..lm.intercept import Client, ModuleCall

__all__ = ["RowCut", "Wave", "active_rows", "repeat_rows"]


def active_rows(layers: Sequence[int], blocks: int, inclusive: bool) -> list[int]:
    """n_j for each block j: how many of the rows (patched at blocks `layers`) block j computes, the first n_j
    when the rows are sorted by layer. A row patched at the output of block l (the residual stream: inclusive
    False) differs from block l + 1 on; one patched inside block l (an attention or MLP output, a head) from
    block l itself."""
    ordered = sorted(layers)
    return [bisect.bisect_right(ordered, j) if inclusive else bisect.bisect_left(ordered, j) for j in range(blocks)]


class RowCut:
    """Cuts the first `keep` rows out of a block call's arguments: tensors (at least 2-D) whose first dimension
    is the batch's `rows`, inside tuples, lists and dicts too; everything else (caches, flags, 1-D cache
    positions) is passed as it is."""

    def __init__(self, rows: int, keep: int) -> None:
        self.rows, self.keep = rows, keep

    def __call__(self, value: Any) -> Any:
        return _map_tensors(self._cut, value)

    def _cut(self, t: torch.Tensor) -> torch.Tensor:
        return t[: self.keep] if t.ndim >= 2 and t.shape[0] == self.rows else t


class Wave(Client):
    """Block j (of `blocks`, in order) runs rows [0, active[j]) of a batch of `rows`; the other rows get
    `stored[j]`, the corrupted run's output of block j (batch 1, positions `start`.. already cut). A block no row
    needs runs not at all; one that every row needs runs as it is."""

    def __init__(self, blocks: Sequence[str], stored: Sequence[Any], active: Sequence[int], rows: int) -> None:
        self.modules = tuple(blocks)
        self.index = {name: j for j, name in enumerate(blocks)}
        self.stored, self.active, self.rows = list(stored), list(active), rows

    def module_call(self, call: ModuleCall) -> Any:
        j = self.index[call.name]
        keep = self.active[j]
        if keep >= self.rows or call.call != 0:
            return None
        stored = self.stored[j]
        if keep == 0:  # a copy where the next block runs: a block may write into its input
            after = self.active[j + 1] if j + 1 < len(self.active) else 0
            return repeat_rows(stored, self.rows, copy=after > 0)
        assert call.forward is not None  # `module_call` is always offered the forward beneath
        cut = RowCut(self.rows, keep)
        out = call.forward(*cut(call.args), **cut(call.kwargs))
        return _stack(out, stored, self.rows)


def repeat_rows(value: Any, n: int, copy: bool) -> Any:
    """Every tensor of a batch-1 output repeated to n rows: a view (copy=False) for outputs nothing reads
    again, a fresh tensor for the one the next running block reads (it may write into its input)."""

    def wide(t: torch.Tensor) -> torch.Tensor:
        if t.ndim == 0 or t.shape[0] != 1:
            return t
        out = t.expand(n, *t.shape[1:])
        return out.clone() if copy else out

    return _map_tensors(wide, value)


def _map_tensors(fn: Callable[[torch.Tensor], torch.Tensor], value: Any) -> Any:
    """`value` with `fn` applied to every tensor in it, inside tuples (named ones too), lists and dicts."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, tuple):
        parts = [_map_tensors(fn, v) for v in value]
        return type(value)(*parts) if hasattr(value, "_fields") else type(value)(parts)
    if isinstance(value, list):
        return [_map_tensors(fn, v) for v in value]
    if isinstance(value, dict):
        return {k: _map_tensors(fn, v) for k, v in value.items()}
    return value


def _stack(ran: Any, stored: Any, n: int) -> Any:
    """The rows a block ran (k, ...) over the stored batch-1 output repeated to the other n - k rows (n, ...),
    for each tensor of the output; a non-tensor part is the ran one's."""
    if isinstance(ran, torch.Tensor) and isinstance(stored, torch.Tensor):
        if ran.ndim == 0 or stored.ndim == 0 or stored.shape[0] != 1:
            return ran
        rest = stored.to(ran.dtype).expand(n - ran.shape[0], *stored.shape[1:])
        return torch.cat((ran, rest))
    if isinstance(ran, (tuple, list)) and isinstance(stored, (tuple, list)) and len(ran) == len(stored):
        parts = [_stack(a, b, n) for a, b in zip(ran, stored, strict=True)]
        return type(ran)(parts) if isinstance(ran, tuple) else parts
    return ran
