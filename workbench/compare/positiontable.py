"""Fixes at a learned position table (GPT-2's `wpe`): the rows it is looked up at, set to the reference's.

A port with learned positions computes its own indices (nanoGPT: `pos = torch.arange(0, t)`), and the classic
mistakes are there: positions 1..T instead of 0..T-1, a cached continuation looked up at 0.. instead of
prefix.., positions counted through left padding where the reference restarts them after it (HF GPT-2 itself
counts from the cache length and ignores `attention_mask` when given no `position_ids`; its `generate`, and
`compare`, pass `cumsum(mask) - 1`, restarting after left padding), or the reverse. The divergence shows at the
embedding point (block 0's input).

The position table is found by role: an nn.Embedding other than the token embedding, with as many rows as the
model has positions (or the only other one). The fix records the indices the reference's table is called with
in the case (every call, the cache's prefill included), and hands the candidate's table those indices, call by
call (a `module_input` edit on the interception layer), while the whole model reruns. It is offered only where
the two disagree at a compared position, and named by how they differ.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..lm.adapter import ModelAdapter
from ..lm.intercept import Client, ModuleCall, intercept
from .activations import Case, positions, run_case
from .fixes import Fix


def position_table(adapter: ModelAdapter) -> tuple[str, nn.Embedding] | None:
    """(name, table) of the model's learned position table, or None when it has none (or no one is clear)."""
    token = adapter.input_embedding()
    tables = [(n, m) for n, m in adapter.model.named_modules() if isinstance(m, nn.Embedding) and m is not token]
    rows = adapter.max_len
    sized = [(n, m) for n, m in tables if m.num_embeddings == rows]
    found = sized or tables
    return found[0] if len(found) == 1 else None


class Indices(Client):
    """An observer of one table's lookups: the indices of each call, in call order."""

    def __init__(self, name: str) -> None:
        self.modules = (name,)
        self.calls: list[torch.Tensor] = []

    def module_input(self, call: ModuleCall) -> None:
        x = call.args[0] if call.args else call.kwargs.get("input")
        if isinstance(x, torch.Tensor):
            self.calls.append(x.detach().clone())


class GivenIndices(Client):
    """An editor of one table's lookups: call k looked up at `indices[k]` (where its last dim, T, fits)."""

    def __init__(self, name: str, indices: list[torch.Tensor]) -> None:
        self.modules, self.indices = (name,), indices

    def module_input(self, call: ModuleCall) -> tuple[tuple, dict[str, Any]] | None:
        x = call.args[0] if call.args else None
        if call.call >= len(self.indices) or not isinstance(x, torch.Tensor):
            return None
        right = self.indices[call.call]
        if right.shape[-1] != x.shape[-1]:
            return None
        return (right.to(x.device), *call.args[1:]), call.kwargs


def lookups(adapter: ModelAdapter, name: str, case: Case) -> list[torch.Tensor]:
    """The indices the table `name` of `adapter.model` is called with over one case (prefill and step)."""
    seen = Indices(name)
    with intercept(adapter.model, seen):
        run_case(adapter, [], case)
    return seen.calls


def table_fixes(reference: ModelAdapter, candidate: ModelAdapter, case: Case) -> list[Fix]:
    """The fix at the candidate's position table, when its lookups in `case` differ from the reference's at a
    compared position; [] when either has no learned table or the indices agree."""
    theirs, mine = position_table(reference), position_table(candidate)
    if theirs is None or mine is None:
        return []
    right, used = lookups(reference, theirs[0], case), lookups(candidate, mine[0], case)
    if not right or len(right) != len(used) or not all(_integer(t) for t in right + used):
        return []
    valid = case.valid
    r, c = _rows(right[-1], valid), _rows(used[-1], valid)
    if r is None or c is None or torch.equal(r[valid], c[valid]):
        return []
    name, cause = _named(mine[0], r, c, case)
    return [Fix(name, cause, lambda: intercept(candidate.model, GivenIndices(mine[0], right)), whole_model=True)]


def _integer(t: torch.Tensor) -> bool:
    return not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool


def _rows(indices: torch.Tensor, valid: torch.Tensor) -> torch.Tensor | None:
    """Indices (T,), (1, T) or (B, T) as (B, T) over the compared positions (a cache-less model's: the last T)."""
    B, T = valid.shape
    x = indices[..., -T:] if indices.shape[-1] >= T else None
    if x is None or x.dim() > 2 or (x.dim() == 2 and x.shape[0] not in (1, B)):
        return None
    return x.reshape(-1, T).expand(B, T).cpu()


def _named(table: str, right: torch.Tensor, used: torch.Tensor, case: Case) -> tuple[str, str]:
    """The fix's name and cause, from how the candidate's indices (B, T) differ from the reference's."""
    valid = case.valid
    r, c = right[valid], used[valid]
    row = valid.shape[0] - 1  # the last row: the padded one in the padded case
    seen = f"`{table}` is looked up at {used[row].tolist()} where the reference's table is at {right[row].tolist()}"
    if torch.equal(c, r + 1):
        return "positions from 0", f"the candidate's positions are off by one (they start at 1, not 0): {seen}"
    if case.prefix and bool((used[:, 0] == 0).all()) and bool((right[:, 0] > 0).all()):
        return ("positions continue from the cache", "in the cached step the candidate's positions restart at 0 "
                f"instead of continuing from the cache length: {seen}")
    if case.mask is not None and not case.prefix:
        counted = torch.arange(valid.shape[1]).expand_as(used)
        restarted = positions(case.mask)
        if torch.equal(r, restarted[valid]) and torch.equal(c, counted[valid]):
            return ("positions restart after padding", "the candidate counts positions through the left padding "
                    f"where the reference restarts them at the first token: {seen}")
        if torch.equal(r, counted[valid]) and torch.equal(c, restarted[valid]):
            return ("positions count the padding", "the candidate restarts positions after the left padding where "
                    f"the reference counts them from the first column: {seen}")
    return "positions as the reference's", f"the candidate's learned positions differ from the reference's: {seen}"
