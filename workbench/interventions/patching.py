"""Activation patching: which activations of a clean run restore its behaviour in a corrupted one.

`patch_positions` sweeps layers x positions (the residual stream after each block, or an attention, MLP or
other module output of each block), `patch_heads` layers x heads (one head's clean output, the columns
h*D:(h+1)*D of the input of the attention's output projection, at every position). Each cell is one run of
the corrupted input with one activation replaced by the clean run's, scored by a metric (`metrics`); the
result is a `PatchingResult`.

A sweep does not pay one forward per cell. The cells of one layer are stacked into a batch (the corrupted
input repeated, row r patched at its own position or head), in chunks that fit `memory_budget`, and each
batch resumes from the patched layer: the blocks before it would compute the corrupted run again, so their
calls are skipped and the corrupted run's stored block outputs returned instead (`Client.module_call`).

A model is causal: patching position p leaves every position before p, in every layer, the corrupted run's.
So a batch of position cells whose first patched position is L > 0 runs positions L..T-1 only, on a fork of
the corrupted run's own KV cache holding positions 0..L-1 in every row (`workbench.lm.prefix`), and takes the
logits of positions before L from the corrupted run. The cells of one layer are split by position into the
batches that cost least (`split_by_position`): one batch runs every position of its rows from its first
one, so fewer, longer batches trade rows against calls. A model without such a cache (a hand-written model)
runs every position, as `resume` alone does, with a note saying so.

The output head runs only on the positions the metric declares it reads (`metrics`). The first batch, and
the first that starts from a cache, is checked against a plain run of one of its cells alone; a model that
cannot take a batch, or whose rows influence each other, is swept one run per cell, and one whose cached
continuation differs is swept without its cache, with a note in the result and in the log.

Every activation is read and replaced through `workbench.lm.intercept` clients.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import InterventionError, WorkbenchError
from ..lm.adapter import ModelAdapter
from ..lm.intercept import Client, ModuleCall, intercept
from ..lm.prefix import PromptCache
from .metrics import Metric, check_metric
from .record import PatchingResult
from .sites import Site, find_site

__all__ = ["patch_heads", "patch_positions", "patched_logits"]

log = logging.getLogger(__name__)
DEFAULT_BUDGET = 1 << 30  # bytes of activations one batch may take
# The fixed cost of one more batch, in row-positions (see `split_by_position`). Small batches run far below the
# matmul throughput of large ones on a CPU: on SmolLM2 (T = 14, 2 threads) splitting a layer's 14 cells at costs
# 8, 24 and 48 was 5-25% slower than one batch per layer, so a short prompt's layer stays one batch and a long one
# (T = 64: four batches of 16) is split.
BATCH_COST = 128


@dataclass(frozen=True)
class Cell:
    """One patched run: the block index and the position (or head) patched there."""

    layer: int
    column: int


# --- activations inside module outputs --------------------------------------------------------------------
def primary(value: Any) -> torch.Tensor:
    """The activation of a module output: the tensor itself, or the first of a tuple (HF attention and blocks
    return (hidden, weights, ...))."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    raise InterventionError(f"cannot patch an output of type {type(value).__name__}: patching needs a tensor "
                            "(B, T, ...) or a tuple that starts with one; pick another site.")


def with_primary(value: Any, tensor: torch.Tensor) -> Any:
    """`value` with its primary tensor replaced by `tensor`."""
    if isinstance(value, torch.Tensor):
        return tensor
    return type(value)((tensor, *value[1:])) if isinstance(value, tuple) else [tensor, *value[1:]]


def from_position(value: Any, start: int) -> Any:
    """`value` with its primary tensor (B, T, ...) cut to positions start.. (B, T - start, ...)."""
    return value if start == 0 else with_primary(value, primary(value)[:, start:])


def repeat_rows(value: Any, n: int, copy: bool) -> Any:
    """Every tensor of a batch-1 output repeated to n rows: a view (copy=False) for outputs nothing reads
    again, a fresh tensor for the one the next running block reads (it may write into its input)."""
    if isinstance(value, torch.Tensor):
        if value.ndim == 0 or value.shape[0] != 1:
            return value
        wide = value.expand(n, *value.shape[1:])
        return wide.clone() if copy else wide
    if isinstance(value, tuple):
        return type(value)(repeat_rows(v, n, copy) for v in value)
    if isinstance(value, list):
        return [repeat_rows(v, n, copy) for v in value]
    return value


# --- the clients --------------------------------------------------------------------------------------------
class Recorder(Client):
    """Keeps the activation of each `site` module (its output's primary tensor, or its first input) and the whole
    output of each `whole` module (blocks, for resuming)."""

    def __init__(self, site: Sequence[str], on_input: bool, whole: Sequence[str] = ()) -> None:
        self.site, self.whole, self.on_input = set(site), set(whole), on_input
        self.modules = tuple(dict.fromkeys([*site, *whole]))
        self.acts: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, Any] = {}

    def module_input(self, call: ModuleCall) -> None:
        if self.on_input and call.name in self.site and call.call == 0:
            if not call.args or not isinstance(call.args[0], torch.Tensor):
                raise InterventionError(f"{call.name} takes no tensor as its first argument; cannot patch heads.")
            self.acts[call.name] = call.args[0].detach()
        return None

    def module_output(self, call: ModuleCall) -> None:
        if call.call != 0:
            return None
        if not self.on_input and call.name in self.site:
            self.acts[call.name] = primary(call.output).detach()
        if call.name in self.whole:
            self.outputs[call.name] = call.output
        return None


class Resume(Client):
    """Skips the named blocks' forwards and returns their stored batch-1 outputs, from position `start` on (a
    run of the positions after a cached prefix), repeated to n rows."""

    def __init__(self, outputs: dict[str, Any], n: int, last: str, start: int = 0) -> None:
        self.modules, self.outputs, self.n, self.last, self.start = tuple(outputs), outputs, n, last, start

    def module_call(self, call: ModuleCall) -> Any:
        return repeat_rows(from_position(self.outputs[call.name], self.start), self.n, copy=call.name == self.last)


class HeadRows(Client):
    """Runs the output head on the positions the metric reads only (B, P, C) and returns logits (B, T, V) that
    are NaN elsewhere: the head's matmul over the vocabulary is a fixed cost per row that resuming cannot cut."""

    def __init__(self, name: str, positions: list[int]) -> None:
        self.modules, self.positions = (name,), positions
        self.T = 0

    def module_input(self, call: ModuleCall) -> tuple[tuple, dict[str, Any]] | None:
        x = call.args[0]  # (B, T, C)
        self.T = x.shape[1]
        return (x[:, self.positions], *call.args[1:]), call.kwargs

    def module_output(self, call: ModuleCall) -> Any:
        out = call.output  # (B, P, V)
        full = out.new_full((out.shape[0], self.T, out.shape[2]), float("nan"))  # (B, T, V)
        full[:, self.positions] = out
        return full


class Patch(Client):
    """Writes clean activations into chosen rows: at module `name`, rows[k] gets the clean value at columns[k]
    (a position (B, T, ...) or a head's slice h*D:(h+1)*D of (B, T, H*D)). A run of positions start.. only
    holds position p at p - start."""

    def __init__(self, site: Site, clean: dict[str, torch.Tensor], cells: dict[str, tuple[list[int], list[int]]],
                 start: int = 0) -> None:
        self.site, self.clean, self.cells, self.start = site, clean, cells, start
        self.modules = tuple(cells)

    def module_input(self, call: ModuleCall) -> tuple[tuple, dict[str, Any]] | None:
        if not self.site.on_input or call.call != 0:
            return None
        return (self._heads(call.name, call.args[0]), *call.args[1:]), call.kwargs

    def module_output(self, call: ModuleCall) -> Any:
        if self.site.on_input or call.call != 0:
            return None
        out = primary(call.output)
        rows, positions = self.cells[call.name]
        src = self.clean[call.name]  # (1, T, ...)
        new = out.clone()
        here = [p - self.start for p in positions]
        new[rows, here] = src[0, positions].to(new.dtype)  # (k, ...) one position per row
        return with_primary(call.output, new)

    def _heads(self, name: str, x: torch.Tensor) -> torch.Tensor:
        rows, heads = self.cells[name]
        H = self.site.heads
        B, T, HD = x.shape
        new = x.clone()
        new.view(B, T, H, HD // H)[rows, :, heads] = (  # (k, T, D): head heads[k] into row rows[k]
            self.clean[name].view(1, T, H, HD // H)[0, :, heads].transpose(0, 1).to(new.dtype))
        return new


# --- the sweep ---------------------------------------------------------------------------------------------
class Sweep:
    """The clean and corrupted runs of one sweep, and the patched runs of its cells."""

    def __init__(self, model: nn.Module, clean: torch.Tensor, corrupted: torch.Tensor, metric: Metric, site: str,
                 memory_budget: int = DEFAULT_BUDGET) -> None:
        self.model, self.adapter = model, ModelAdapter(model)
        self.clean_ids, self.corrupted_ids = _pair(clean, corrupted, self.adapter)
        self.metric, self.budget = metric, memory_budget
        self.site = find_site(self.adapter, site)
        self.head = _head_name(model, self.adapter)
        self.notes: list[str] = []
        self.by_position = self.site.kind != "heads"  # a cell patches one position, not every one
        self._prompt: PromptCache | None = None
        self._no_prompt = not self.by_position  # True once the corrupted run's cache is found unusable
        if model.training:
            self.notes.append("the model is in training mode: dropout makes each run differ; call model.eval()")
        with torch.no_grad():
            clean_run = Recorder(self.site.modules, self.site.on_input)
            with intercept(model, clean_run):
                self.clean_logits = self.adapter.logits(self.clean_ids)
            corrupted_run = Recorder(self.site.modules, self.site.on_input, self.site.blocks)
            with intercept(model, corrupted_run):
                corrupted_logits = self.adapter.logits(self.corrupted_ids)
        self.clean_acts = clean_run.acts
        self.corrupted_outputs = corrupted_run.outputs
        self.corrupted_logits = corrupted_logits  # (1, T, V)
        self.clean_metric = float(check_metric(metric, self.clean_logits)[0])
        self.corrupted_metric = float(check_metric(metric, corrupted_logits)[0])
        self.read = _read_positions(metric, self.clean_ids.shape[1])

    # --- single runs ---
    def logits(self, cells: Sequence[Cell], resume: bool = True, trim: bool = False, start: int = 0
               ) -> torch.Tensor:
        """Logits (N, T, V) of the corrupted input with row r patched at cells[r]; with resume, the blocks
        before the first patched layer are not run again; with trim, only the positions the metric declares it
        reads get logits (NaN elsewhere). start > 0 (position cells at start or later only): positions
        start..T-1 run on a fork of the corrupted run's cache, and positions before start get the corrupted
        run's logits, which a causal model's patched runs share."""
        n, first = len(cells), min(c.layer for c in cells)
        by_module: dict[str, tuple[list[int], list[int]]] = {}
        for r, c in enumerate(cells):
            rows, cols = by_module.setdefault(self.site.modules[c.layer], ([], []))
            rows.append(r)
            cols.append(c.column)
        clients: list[Client] = [Patch(self.site, self.clean_acts, by_module, start)]
        skip_through = first if self.site.kind == "resid" else first - 1  # a block whose output is patched: itself
        if resume and skip_through >= 0:
            skipped = {b: self.corrupted_outputs[b] for b in self.site.blocks[: skip_through + 1]}
            clients.insert(0, Resume(skipped, n, self.site.blocks[skip_through], start))
        if trim and self.read is not None and self.head is not None:
            clients.append(HeadRows(self.head, [p - start for p in self.read if p >= start]))
        ids = self.corrupted_ids[:, start:].expand(n, -1)  # (N, T - start)
        prompt = self.prompt() if start > 0 else None
        with torch.no_grad(), intercept(self.model, *clients):
            if prompt is None:
                return self.adapter.logits(ids, allow_nonfinite=True)
            after, _ = self.adapter.cached(ids, prompt.fork(start, n), allow_nonfinite=True)  # (N, T - start, V)
        return torch.cat((self.corrupted_logits[:, :start].expand(n, -1, -1), after), dim=1)  # (N, T, V)

    def values(self, cells: Sequence[Cell], resume: bool = True, trim: bool = False, start: int = 0
               ) -> list[float]:
        logits = self.logits(cells, resume, trim, start)
        if logits.shape[0] != len(cells):
            raise RuntimeError(f"the model returned {logits.shape[0]} rows for a batch of {len(cells)}")
        return check_metric(self.metric, logits).tolist()

    def prompt(self) -> PromptCache | None:
        """The corrupted run's own KV cache (built once), or None, with a note, for a model that gives none
        that can be forked: its batches then run every position."""
        if self._prompt is None and not self._no_prompt:
            try:
                self._prompt = PromptCache(self.adapter, self.corrupted_ids)
            except (RuntimeError, ValueError, TypeError, AttributeError, WorkbenchError) as err:
                self._give_up_prompt(f"the model gives no KV cache to resume from ({str(err)[:200]})")
        return self._prompt

    def _give_up_prompt(self, why: str) -> None:
        self._prompt, self._no_prompt = None, True
        note = f"{why}; every position from the patched layer up was run"
        log.info("patching sweep: %s", note)
        self.notes.append(note)

    # --- the sweep ---
    def run(self, cells: list[Cell], batch: bool, resume: bool) -> tuple[dict[Cell, float], bool]:
        """The metric of every cell, and whether the runs were batched."""
        if not batch:
            return {c: self.values([c], resume=False)[0] for c in cells}, False
        out: dict[Cell, float] = {}
        pending = self.chunks(cells, by_position=resume and not self._no_prompt)
        checked: set[bool] = set()  # the kinds of batch checked against a run alone: from a cache or not
        while pending:
            start, chunk = pending.pop(0)
            cached = start > 0 and self.prompt() is not None
            if start > 0 and not cached:  # no cache after all: the rest in batches that run every position
                pending = self.chunks([c for c in chunk] + [c for _, ch in pending for c in ch], by_position=False)
                continue
            try:
                got = self.values(chunk, resume, trim=True, start=start)
                if cached not in checked:
                    checked.add(cached)
                    self._check_rows(chunk[-1] if cached else chunk[0], got[-1] if cached else got[0])
            except (RuntimeError, ValueError, IndexError, TypeError, AttributeError, WorkbenchError) as err:
                if isinstance(err, InterventionError):
                    raise
                if cached:
                    self._give_up_prompt(f"a batch resumed from the model's KV cache failed ({type(err).__name__}: "
                                         f"{str(err)[:200]})")
                    pending = self.chunks(chunk + [c for _, ch in pending for c in ch], by_position=False)
                    continue
                note = (f"batched runs failed ({type(err).__name__}: {str(err)[:200]}); ran one forward per cell "
                        "instead")
                log.warning("patching sweep: %s", note)
                self.notes.append(note)
                rest = chunk + [c for _, ch in pending for c in ch]
                out.update({c: self.values([c], resume=False)[0] for c in rest})
                return out, False
            out.update(zip(chunk, got))
        return out, True

    def _check_rows(self, cell: Cell, batched: float) -> None:
        """Raise RuntimeError when a batched row differs from the same cell run alone (rows that influence each
        other, a model that ignores all rows but the first, or a cache that does not continue the prompt)."""
        alone = self.values([cell], resume=False)[0]
        scale = max(1.0, abs(alone), abs(self.clean_metric - self.corrupted_metric))
        if not abs(batched - alone) <= 1e-3 * scale:
            raise RuntimeError(f"a batched row gave {batched:.6g} where the same run alone gives {alone:.6g}")

    def chunks(self, cells: list[Cell], by_position: bool) -> list[tuple[int, list[Cell]]]:
        """(start, cells) batches: cells grouped by layer (a batch resumes from its layer), each group split to
        fit the memory budget; by_position, split by position as well (`split_by_position`), each batch
        starting at its first position. Without, every batch starts at 0."""
        per_batch = max(1, self.budget // self.row_bytes())
        by_layer: dict[int, list[Cell]] = {}
        for c in cells:
            by_layer.setdefault(c.layer, []).append(c)
        if not by_position:
            return [(0, group[i: i + per_batch]) for _, group in sorted(by_layer.items())
                    for i in range(0, len(group), per_batch)]
        T = self.clean_ids.shape[1]
        out: list[tuple[int, list[Cell]]] = []
        for _, group in sorted(by_layer.items()):
            group = sorted(group, key=lambda c: c.column)
            for lo, hi in split_by_position([c.column for c in group], T, per_batch, BATCH_COST):
                out.append((group[lo].column, group[lo:hi]))
        return out

    def row_bytes(self) -> int:
        """A generous estimate of the activations one batch row holds at once: its logits twice over (the
        metric's softmax) and the widest activations of a block (attention scores, an MLP's hidden layer)."""
        T, V = self.clean_logits.shape[1:]
        C = primary(self.corrupted_outputs[self.site.blocks[0]]).shape[-1]
        return self.clean_logits.element_size() * T * (2 * V + 24 * C + 8 * T)

    def result(self, layers: list[int], columns: list[int], labels: list[str], values: dict[Cell, float],
               batched: bool) -> PatchingResult:
        return PatchingResult(
            site=self.site.kind, layers=layers, layer_names=[self.site.modules[i] for i in layers], columns=columns,
            column_labels=labels, values=[[values[Cell(i, j)] for j in columns] for i in layers],
            clean=self.clean_metric, corrupted=self.corrupted_metric, batched=batched, notes=list(self.notes))


def split_by_position(columns: list[int], T: int, most: int, batch_cost: int = BATCH_COST) -> list[tuple[int, int]]:
    """The cheapest split of sorted positions `columns` (one layer's cells) into batches of consecutive cells,
    as [lo, hi) index ranges of at most `most` cells. A batch of the cells lo..hi-1 runs positions
    columns[lo]..T-1 of each of its rows: it costs (hi - lo) * (T - columns[lo]) row-positions, plus
    `batch_cost` for running one more batch at all (reading every weight once more, the calls between the
    blocks). Exact, by dynamic programming over the split points (O(N^2) for N cells)."""
    N = len(columns)
    best = [0.0] + [float("inf")] * N  # best[j]: the least cost of the first j cells
    cut = [0] * (N + 1)
    for hi in range(1, N + 1):
        for lo in range(max(0, hi - most), hi):
            cost = best[lo] + batch_cost + (hi - lo) * (T - columns[lo])
            if cost < best[hi]:
                best[hi], cut[hi] = cost, lo
    spans: list[tuple[int, int]] = []
    hi = N
    while hi > 0:
        spans.append((cut[hi], hi))
        hi = cut[hi]
    return spans[::-1]


def _read_positions(metric: Metric, T: int) -> list[int] | None:
    """The positions a metric declares it reads (its `positions` attribute, as the helpers in `metrics` have),
    in [0, T); None when it declares none (then every position gets logits)."""
    positions = getattr(metric, "positions", None)
    if not isinstance(positions, (tuple, list)) or not positions or not all(
            isinstance(p, int) and -T <= p < T for p in positions):
        return None
    return sorted({p % T for p in positions})


def _head_name(model: nn.Module, adapter: ModelAdapter) -> str | None:
    """The module name of the output head, when it is a projection applied position by position."""
    head = adapter.output_head()
    if not isinstance(head, nn.Linear):
        return None
    return next((name for name, m in model.named_modules() if m is head and name), None)


def _pair(clean: Any, corrupted: Any, adapter: ModelAdapter) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean and corrupted ids as (1, T) on the model's device; refuses anything else."""
    out = []
    for name, ids in (("clean", clean), ("corrupted", corrupted)):
        if not isinstance(ids, torch.Tensor) or ids.dtype not in (torch.long, torch.int32, torch.int64):
            raise InterventionError(f"the {name} input must be a tensor of token ids (T,) or (1, T), got "
                                    f"{type(ids).__name__}{'' if not isinstance(ids, torch.Tensor) else ids.dtype}.")
        ids = ids[None] if ids.ndim == 1 else ids
        if ids.ndim != 2 or ids.shape[0] != 1 or ids.shape[1] == 0:
            raise InterventionError(f"the {name} input must be one sequence, (T,) or (1, T), got "
                                    f"{tuple(ids.shape)}; sweep one prompt pair at a time.")
        adapter.check_ids(ids)
        out.append(ids.to(adapter.device).long())
    if out[0].shape != out[1].shape:
        raise InterventionError(f"clean and corrupted inputs must have the same length to patch position by "
                                f"position: got {out[0].shape[1]} and {out[1].shape[1]} tokens. Pad or reword the "
                                "corrupted prompt to the clean one's token count.")
    return out[0], out[1]


def _indices(name: str, given: int | Sequence[int] | None, size: int, what: str) -> list[int]:
    """Indices in [0, size), negative counted from the end; None for all."""
    if given is None:
        return list(range(size))
    values = [given] if isinstance(given, int) else list(given)
    out = []
    for v in values:
        if not isinstance(v, int) or isinstance(v, bool) or not -size <= v < size:
            raise InterventionError(f"{name} {v!r} is outside the {size} {what}; give {name}s in [{-size}, {size}).")
        out.append(v % size)
    if not out:
        raise InterventionError(f"no {name}s given: pass None for all {size} {what}, or a list of indices.")
    return list(dict.fromkeys(out))


def patch_positions(model: nn.Module, clean: torch.Tensor, corrupted: torch.Tensor, metric: Metric, *,
                    site: str = "resid", layers: int | Sequence[int] | None = None,
                    positions: int | Sequence[int] | None = None, tokens: Sequence[str] | None = None,
                    batch: bool = True, resume: bool = True, memory_budget: int = DEFAULT_BUDGET) -> PatchingResult:
    """Layers x positions: cell (l, p) runs `corrupted` (T,) or (1, T) with block l's `site` activation at
    position p taken from the `clean` run (same length), and scores it with `metric` (logits (B, T, V) -> (B,)).

    site: "resid" (block outputs), "attn", "mlp", or a module name relative to each block. tokens: a label per
    position for the figure. batch / resume: stack cells into batches / skip the blocks before the patched layer
    (False for one plain forward per cell); memory_budget: bytes one batch may take."""
    if site == "heads":
        raise InterventionError("site 'heads' patches heads, not positions: use patch_heads.")
    sweep = Sweep(model, clean, corrupted, metric, site, memory_budget)
    T = sweep.clean_ids.shape[1]
    rows = _indices("layer", layers, sweep.site.layers, "layers")
    cols = _indices("position", positions, T, "positions of the input")
    if tokens is not None and len(tokens) != T:
        raise InterventionError(f"tokens gives {len(tokens)} labels for {T} positions; give one per position.")
    labels = [f"{p} {tokens[p]!r}" if tokens is not None else str(p) for p in cols]
    values, batched = sweep.run([Cell(i, j) for i in rows for j in cols], batch, resume)
    return sweep.result(rows, cols, labels, values, batched)


def patch_heads(model: nn.Module, clean: torch.Tensor, corrupted: torch.Tensor, metric: Metric, *,
                layers: int | Sequence[int] | None = None, heads: int | Sequence[int] | None = None,
                batch: bool = True, resume: bool = True, memory_budget: int = DEFAULT_BUDGET) -> PatchingResult:
    """Layers x heads: cell (l, h) runs `corrupted` with head h of block l taken from the `clean` run at every
    position (the columns h*D:(h+1)*D of the input of the attention's output projection), scored by `metric`."""
    sweep = Sweep(model, clean, corrupted, metric, "heads", memory_budget)
    rows = _indices("layer", layers, sweep.site.layers, "layers")
    cols = _indices("head", heads, sweep.site.heads, "heads")
    values, batched = sweep.run([Cell(i, j) for i in rows for j in cols], batch, resume)
    return sweep.result(rows, cols, [f"h{h}" for h in cols], values, batched)


def patched_logits(model: nn.Module, clean: torch.Tensor, corrupted: torch.Tensor, layer: int, column: int, *,
                   site: str = "resid") -> torch.Tensor:
    """Logits (1, T, V) of one plain patched run: `corrupted` with block `layer`'s `site` activation at position
    `column` (a head, for site "heads") taken from the `clean` run. What one sweep cell computes, unbatched."""
    sweep = Sweep(model, clean, corrupted, lambda logits: logits[:, -1, 0].float(), site)
    size = sweep.site.heads if site == "heads" else sweep.clean_ids.shape[1]
    (i,) = _indices("layer", layer, sweep.site.layers, "layers")
    (j,) = _indices("head" if site == "heads" else "position", column, size,
                    "heads" if site == "heads" else "positions of the input")
    return sweep.logits([Cell(i, j)], resume=False)
