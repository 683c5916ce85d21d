"""Activation patching: which activations of a clean run restore its behaviour in a corrupted one.

`patch_positions` sweeps layers x positions (the residual stream after each block, or an attention, MLP or
other module output of each block), `patch_heads` layers x heads (one head's clean output, the columns
h*D:(h+1)*D of the input of the attention's output projection, at every position). Each cell is one run of
the corrupted input with one activation replaced by the clean run's, scored by a metric (`metrics`); the
result is a `PatchingResult`.

A sweep does not pay one forward per cell. A cell whose clean activation is bit for bit the corrupted run's
(every position before the first token the prompts differ in, in a causal model) is the corrupted run itself
and is not run. The others are stacked into batches (the corrupted input repeated, row r patched at its own
position or head), sorted by layer, in chunks that fit `memory_budget`. A row patched at block l is the
corrupted run until l, so each block runs only the rows a patch has reached and takes the corrupted run's
stored output for the others (`wave.Wave`, through `Client.module_call`).

A model is causal: patching position p leaves every position before p, in every layer, the corrupted run's.
So a batch of position cells whose first patched position is L > 0 runs positions L..T-1 only, on a fork of
the corrupted run's own KV cache holding positions 0..L-1 (`workbench.lm.prefix`; layer j's holds the rows
block j runs), and takes the logits of positions before L from the corrupted run. Which positions share a
batch is chosen by cost (`batches.by_position`): fewer, longer batches trade rows against calls. A model
without such a cache (a hand-written model) runs every position, with a note saying so.

The output head runs only on the positions the metric declares it reads (`metrics`). The first batch of each
kind (from a cache or not, its blocks running part of the rows or all) is checked against a plain run of one
of its cells alone. A batch whose blocks cannot run part of its rows runs every row from then on (logged); a
model that cannot take a batch, or whose rows influence each other, is swept one run per cell, and one whose
cached continuation differs is swept without its cache, with a note in the result and in the log.

Every activation is read and replaced through `workbench.lm.intercept` clients.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import InterventionError, WorkbenchError
from ..lm.adapter import ModelAdapter
from ..lm.intercept import Client, ModuleCall, intercept
from ..lm.prefix import PromptCache
from . import batches
from .batches import Cell
from .metrics import Metric, check_metric
from .record import PatchingResult
from .sites import Site, find_site
from .wave import Wave, active_rows

__all__ = ["patch_heads", "patch_positions", "patched_logits"]

log = logging.getLogger(__name__)
DEFAULT_BUDGET = 1 << 30  # bytes of activations one batch may take


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


class HeadRows(Client):
    """Runs the output head on the positions the metric reads only (B, P, C) and returns logits (B, T, V) that
    are NaN elsewhere: the head's matmul over the vocabulary is a fixed cost per row that resuming cannot cut.
    The logits are written into `into`, a view of the sweep's `LogitRows` (NaN where nothing reads), when it
    fits the batch."""

    def __init__(self, name: str, positions: list[int], into: torch.Tensor | None = None) -> None:
        self.modules, self.positions, self.into = (name,), positions, into
        self.T = 0

    def module_input(self, call: ModuleCall) -> tuple[tuple, dict[str, Any]] | None:
        x = call.args[0]  # (B, T, C)
        self.T = x.shape[1]
        return (x[:, self.positions], *call.args[1:]), call.kwargs

    def module_output(self, call: ModuleCall) -> Any:
        out = call.output  # (B, P, V)
        full = self.into
        if full is None or full.shape != (out.shape[0], self.T, out.shape[2]) or full.dtype != out.dtype:
            full = out.new_full((out.shape[0], self.T, out.shape[2]), float("nan"))  # (B, T, V)
        full[:, self.positions] = out
        return full


class LogitRows:
    """One (N, T, V) tensor of NaN for a sweep's batches to write the positions the metric reads into: every
    batch writes the same positions, so the rest stays NaN, and a batch costs no fresh (N, T, V) of NaN nor a
    copy to put the corrupted run's logits before its first position."""

    def __init__(self) -> None:
        self.buffer: torch.Tensor | None = None

    def take(self, n: int, like: torch.Tensor) -> torch.Tensor:
        """Rows [0, n) (n, T, V), in `like`'s (1, T, V) dtype and device."""
        b = self.buffer
        if b is None or b.shape[0] < n or b.shape[1:] != like.shape[1:] or b.dtype != like.dtype or \
                b.device != like.device:
            self.buffer = b = like.new_full((n, *like.shape[1:]), float("nan"))
        return b[:n]


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
        # blocks run only the rows a patch has reached: for models whose block arguments keep the batch first
        self._cut_rows = self.adapter.kind in ("workbench", "hf")
        if model.training:
            self.notes.append("the model is in training mode: dropout makes each run differ; call model.eval()")
        with torch.no_grad():
            clean_run = Recorder(self.site.modules, self.site.on_input)
            with intercept(model, clean_run):
                self.clean_logits = self.adapter.logits(self.clean_ids)
            corrupted_run = Recorder(self.site.modules, self.site.on_input, self.site.blocks)
            with intercept(model, corrupted_run):
                corrupted_logits = self.adapter.logits(self.corrupted_ids)
        self.clean_acts, self.corrupted_acts = clean_run.acts, corrupted_run.acts
        self.corrupted_outputs = corrupted_run.outputs
        self.corrupted_logits = corrupted_logits  # (1, T, V)
        self.clean_metric = float(check_metric(metric, self.clean_logits)[0])
        self.corrupted_metric = float(check_metric(metric, corrupted_logits)[0])
        self.read = _read_positions(metric, self.clean_ids.shape[1])
        self.read_logits = LogitRows()

    # --- single runs ---
    def logits(self, cells: Sequence[Cell], resume: bool = True, trim: bool = False, start: int = 0
               ) -> torch.Tensor:
        """Logits (N, T, V) of the corrupted input with row r patched at cells[r] (sorted by layer when
        resuming); with resume, each block runs only the rows patched below it (`Wave`), the others taking the
        corrupted run's stored output; with trim, only the positions the metric declares it reads get logits
        (NaN elsewhere). start > 0 (position cells at start or later only): positions start..T-1 run on a fork
        of the corrupted run's cache, and positions before start get the corrupted run's logits, which a causal
        model's patched runs share."""
        n = len(cells)
        by_module: dict[str, tuple[list[int], list[int]]] = {}
        for r, c in enumerate(cells):
            rows, cols = by_module.setdefault(self.site.modules[c.layer], ([], []))
            rows.append(r)
            cols.append(c.column)
        clients: list[Client] = [Patch(self.site, self.clean_acts, by_module, start)]
        prompt = self.prompt() if start > 0 else None
        if start > 0 and prompt is None:
            raise RuntimeError("no cache to run the positions after a prefix on")
        active: list[int] | None = None
        if resume:
            active = self.active([c.layer for c in cells], n, start, prompt)
            stored = [from_position(self.corrupted_outputs[b], start) for b in self.site.blocks]
            clients.insert(0, Wave(self.site.blocks, stored, active, n))
        into: torch.Tensor | None = None
        if trim and self.read is not None and self.head is not None:
            into = self.read_logits.take(n, self.corrupted_logits)  # (N, T, V)
            clients.append(HeadRows(self.head, [p - start for p in self.read if p >= start], into[:, start:]))
        ids = self.corrupted_ids[:, start:].expand(n, -1)  # (N, T - start)
        with torch.no_grad(), intercept(self.model, *clients):
            if prompt is None:
                return self.adapter.logits(ids, allow_nonfinite=True)
            cut = active is not None and prompt.per_layer and any(0 < k < n for k in active)
            fork = prompt.fork(start, n, layer_rows=active if cut else None)
            after, _ = self.adapter.cached(ids, fork, allow_nonfinite=True)  # (N, T - start, V)
        if into is not None and self.read is not None and after.data_ptr() == into[:, start:].data_ptr() and \
                after.shape == into[:, start:].shape:  # the head's rows, written in place: the prefix's read ones
            before = [p for p in self.read if p < start]
            into[:, before] = self.corrupted_logits[:, before]
            return into
        return torch.cat((self.corrupted_logits[:, :start].expand(n, -1, -1), after), dim=1)  # (N, T, V)

    def active(self, layers: list[int], n: int, start: int, prompt: PromptCache | None) -> list[int]:
        """The rows block j runs, for rows patched at `layers`: those a patch has reached (`active_rows`) where
        the rows can be cut, else every row from the first patched block on. Rows are cut for the workbench
        model and transformers models (whose block arguments keep the batch first), in a batch whose row count
        is no length of the run (which would make that reading ambiguous), and on a cache forked per layer."""
        reached = active_rows(sorted(layers), self.site.layers, inclusive=self.site.kind != "resid")
        T = self.clean_ids.shape[1]
        if (self._cut_rows and layers == sorted(layers) and n not in (T - start, T)
                and (prompt is None or prompt.per_layer)):
            return reached
        return [n if k else 0 for k in reached]

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
                self._prompt = PromptCache(self.adapter, self.corrupted_ids, blocks=self.site.layers)
            except (RuntimeError, ValueError, TypeError, AttributeError, WorkbenchError) as err:
                self._give_up_prompt(f"the model gives no KV cache to resume from ({str(err)[:200]})")
        return self._prompt

    def _give_up_prompt(self, why: str) -> None:
        self._prompt, self._no_prompt = None, True
        note = f"{why}; every position from the patched layer up was run"
        log.info("patching sweep: %s", note)
        self.notes.append(note)

    def unchanged(self, cell: Cell) -> bool:
        """Whether the clean activation of `cell` is the corrupted run's own, bit for bit: the patched run is
        then the corrupted run (every position before the first token the prompts differ in, in a causal
        model). Never in training mode, where dropout makes each run differ."""
        if self.model.training:
            return False
        name = self.site.modules[cell.layer]
        clean, corrupted = self.clean_acts[name], self.corrupted_acts.get(name)
        if corrupted is None or clean.shape != corrupted.shape:
            return False
        if self.site.kind == "heads":
            D = clean.shape[-1] // self.site.heads
            cols = slice(cell.column * D, (cell.column + 1) * D)
            return torch.equal(clean[..., cols], corrupted[..., cols])
        return torch.equal(clean[:, cell.column], corrupted[:, cell.column])

    # --- the sweep ---
    def run(self, cells: list[Cell], batch: bool, resume: bool, skip_unchanged: bool = True
            ) -> tuple[dict[Cell, float], bool]:
        """The metric of every cell, and whether the runs were batched. Batched, a cell whose clean activation
        is the corrupted run's own (`unchanged`) is not run: it scores the corrupted run's metric."""
        if not batch:
            return {c: self.values([c], resume=False)[0] for c in cells}, False
        out: dict[Cell, float] = {}
        if skip_unchanged:
            out = {c: self.corrupted_metric for c in cells if self.unchanged(c)}
            cells = [c for c in cells if c not in out]
        pending = self.chunks(cells, by_position=resume and not self._no_prompt) if cells else []
        checked: set[tuple[bool, bool]] = set()  # the kinds of batch checked against a run alone
        while pending:
            start, chunk = pending.pop(0)
            cached = start > 0 and self.prompt() is not None
            if start > 0 and not cached:  # no cache after all: the rest in batches that run every position
                pending = self.chunks(chunk + [c for _, ch in pending for c in ch], by_position=False)
                continue
            cut = resume and any(0 < k < len(chunk) for k in self.active(
                [c.layer for c in chunk], len(chunk), start, self._prompt if cached else None))
            try:
                got = self.values(chunk, resume, trim=True, start=start)
                if (cached, cut) not in checked:
                    checked.add((cached, cut))
                    probe = _probe(chunk) if resume else 0
                    self._check_rows(chunk[probe], got[probe])
            except (RuntimeError, ValueError, IndexError, TypeError, AttributeError, WorkbenchError) as err:
                if isinstance(err, InterventionError):
                    raise
                why = f"{type(err).__name__}: {str(err)[:200]}"
                if cut:  # run every row of each block from its first patched one, as plain batches do
                    log.info("patching sweep: a batch whose blocks ran some of its rows failed (%s); every row "
                             "runs from now on", why)
                    self._cut_rows = False
                    pending.insert(0, (start, chunk))
                    continue
                if cached:
                    self._give_up_prompt(f"a batch resumed from the model's KV cache failed ({why})")
                    pending = self.chunks(chunk + [c for _, ch in pending for c in ch], by_position=False)
                    continue
                note = f"batched runs failed ({why}); ran one forward per cell instead"
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
        """(start, cells) batches that fit the memory budget: by position, the cheapest groups of positions
        (`batches.by_position`), each from its first position; without, from position 0: as few batches as
        fit where blocks run only the rows a patch has reached, else one layer per batch."""
        per_batch = max(1, self.budget // self.row_bytes())
        if not by_position:
            return batches.by_rows(cells, per_batch) if self._cut_rows else batches.by_layer(cells, per_batch)
        return batches.by_position(cells, self.clean_ids.shape[1], self.site.layers,
                                   self.site.kind != "resid", per_batch)

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


def _probe(chunk: Sequence[Cell]) -> int:
    """The row of a batch (sorted by layer) checked against its run alone: the latest position among the rows
    patched lowest, which runs on the longest cached prefix and through the most blocks that cut rows."""
    first = chunk[0].layer
    return max((r for r, c in enumerate(chunk) if c.layer == first), key=lambda r: chunk[r].column)


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
    position for the figure. batch / resume: stack cells into batches / run each block on the rows patched below
    it only (False for one plain forward per cell); memory_budget: bytes one batch may take. Batched, a cell
    whose clean activation equals the corrupted one bit for bit (a position before the first token the prompts
    differ in) is not run: its value is the corrupted run's metric, which that run gives exactly."""
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
