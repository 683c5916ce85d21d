"""`trace()` and the `Trace` it returns: records, tables, summary, save/load (the file is `serialize`'s).

    with workbench.trace(model, attention=True) as tr:
        model(input_ids)
    tr.summary(); tr.to_dataframe(); tr.first_nonfinite(); tr.attention

Hooks exist only inside the `with` block; everything device-side is read back in one sync at exit.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..display import export_html
from ..distributed.env import unwrap
from ..distributed.gather import rank_meta
from ..errors import CaptureError
from . import serialize
from .attention import AttentionSelection
from .gradients import GradientCapture, module_norms
from .hooks import CaptureOptions, Recorder
from .layout import Layout, filter_key, model_layout
from .ranks import gather_trace, rank_memory, trace_for_rank, trace_ranks
from .records import AttentionRecord, ModuleRecord, ParamGradRecord
from .report import format_bytes, summary_table, to_dataframe
from .select import ModuleFilter, select_modules


def trace(
    module: nn.Module,
    *,
    shapes: bool = True,
    timing: bool = True,
    memory: bool = False,
    stats: bool | ModuleFilter = True,
    samples: int = 0,
    attention: bool = False,
    gradients: bool = False,
    modules: ModuleFilter = None,
    attention_layers: Sequence[int | str] | None = None,
    attention_heads: Sequence[int] | None = None,
    attention_queries: Sequence[int] | slice | None = None,
    attention_batch: int | Sequence[int] | None = 0,
    attention_budget_bytes: int = 256 * 2**20,
    attention_source: str = "auto",
    optimizer: torch.optim.Optimizer | None = None,
) -> Trace:
    r"""Capture what happens inside `module` during a `with` block; works on any nn.Module.

    shapes/timing/stats are cheap and on by default; stats may also be a module filter (like
    `modules`): then only those recorded modules get activation statistics, which are the main
    cost of a trace (exact mean/std/abs-max/NaN counts read every element), e.g.
    stats=r"^blocks\.\d+$" for layer outputs only. On an accelerator, statistics are reduced in
    batches and hold at most 128 MiB of copies per device meanwhile.
    memory adds output bytes, bytes saved for backward (saved-tensors hooks) and, on CUDA, allocator
    delta/peak per layer-level module.
    samples keeps that many evenly strided output values per call (for histograms).
    attention captures probabilities (B, H, T, S) and per-head metrics: from workbench hook sites,
    else by intercepting F.scaled_dot_product_attention and 4-D softmax calls. The attention_*
    arguments select layers (ordinals or module-path regexes), heads, query rows and batch rows;
    any of them switches attention on. Maps are kept on the CPU in float16 within
    attention_budget_bytes (downsampled or skipped past it, with a warning).
    gradients records per-parameter gradient norms after backward in the block; pass `optimizer`
    (or call `tr.watch_optimizer`) for update/weight ratios.
    modules restricts which modules get records: a regex string, a list of exact names, or a
    predicate(name, module).
    Under torch.distributed, trace on every rank: a DDP model is traced through its `.module` (names
    without the "module." prefix, gradients read after DDP's all-reduce); FSDP2 gradient statistics
    are reduced over the shards at exit (a collective). Records carry `rank`; see `gather`.
    """
    if not isinstance(module, nn.Module):
        raise CaptureError(f"trace() needs an nn.Module, got {type(module).__name__}; pass the model itself.")
    module, wrapper = unwrap(module)
    flags = dict(shapes=shapes, timing=timing, memory=memory, samples=samples, attention=attention,
                 gradients=gradients)
    for name, value in flags.items():
        if name == "samples":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise CaptureError(f"samples must be an integer >= 0 (values kept per call), got {value!r}.")
        elif not isinstance(value, bool):
            raise CaptureError(f"{name} must be True or False, got {value!r}.")
    if not isinstance(stats, bool) and stats is None:
        raise CaptureError("stats must be True, False or a module filter (regex, names or predicate), got None.")
    wants_attn = attention or any(
        x is not None for x in (attention_layers, attention_heads, attention_queries)
    )
    # Built even when attention is off, so a malformed selection is refused here, not silently ignored.
    sel = AttentionSelection(attention_layers, attention_heads, attention_queries, attention_batch,
                             attention_budget_bytes)
    if wants_attn:
        _check_heads(module, sel)
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise CaptureError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}.")
    layout = model_layout(module)  # the module tree, cached across traces of an unchanged model
    named, key = layout.named, filter_key(modules)
    # fail here, not later inside the with statement
    targets = layout.selected(key and ("targets", key), lambda: select_modules(module, modules, named))
    if not targets:
        raise CaptureError(f"modules={modules!r} matched no module; check model.named_modules().")
    stats_key = key and filter_key(stats)
    stats_on, stats_modules = layout.derived(stats_key and ("stats", key, stats_key),
                                             lambda: _stats_selection(module, stats, named, targets))
    opts = CaptureOptions(shapes, timing, memory, stats_on, stats_modules, samples, sel if wants_attn else None,
                          attention_source)
    tr = Trace(module, opts, modules, gradients, optimizer)
    tr._targets, tr._layout, tr._wrapper = targets, layout, wrapper
    tr._targets_key = key and ("targets", key)
    return tr


def _check_heads(module: nn.Module, sel: AttentionSelection) -> None:
    """Refuse heads past the model's head count before the forward, when its config says it (workbench
    `n_heads`, HF `num_attention_heads`); other models are checked per call, reported at exit."""
    config = getattr(module, "config", None)
    n = getattr(config, "n_heads", None) or getattr(config, "num_attention_heads", None)
    if sel.heads is None or isinstance(n, bool) or not isinstance(n, int):
        return
    heads = [sel.heads] if isinstance(sel.heads, int) else list(sel.heads)
    bad = [h for h in heads if h >= n]
    if bad:
        raise CaptureError(f"attention_heads={sel.heads!r} names head(s) {bad}, but the model has {n} heads; "
                           f"choose heads in [0, {n}).")


def _stats_selection(module: nn.Module, stats: bool | ModuleFilter, named: list[tuple[str, nn.Module]],
                     targets: list[tuple[str, nn.Module]]) -> tuple[bool, tuple[str, ...] | None]:
    """(stats on, names of the recorded modules that get statistics or None for all) from `stats`."""
    if isinstance(stats, bool):
        return stats, None
    if stats is None:
        raise CaptureError("stats must be True, False or a module filter (regex, names or predicate), got None.")
    recorded = {n for n, _ in targets}
    names = tuple(n for n, _ in select_modules(module, stats, named) if n in recorded)
    if not names:
        raise CaptureError(
            f"stats={stats!r} matched no recorded module; use names from model.named_modules() that "
            "`modules=` also records, a regex string, or a predicate(name, module)."
        )
    return True, names


class Trace:
    """Everything one traced block captured. Fields are plain data after the block exits.

    records     list[ModuleRecord], execution order (see records.py for the schema)
    attention   list[AttentionRecord]
    gradients   list[ParamGradRecord] (gradients=True)
    meta        dict: model type, device, options, totals, timings
    """

    def __init__(self, model: nn.Module | None = None, options: CaptureOptions | None = None,
                 modules: ModuleFilter = None, gradients: bool = False,
                 optimizer: torch.optim.Optimizer | None = None) -> None:
        self.records: list[ModuleRecord] = []
        self.attention: list[AttentionRecord] = []
        self.gradients: list[ParamGradRecord] = []
        self.meta: dict[str, Any] = {}
        self._model = model
        self._options = options
        self._modules = modules
        self._want_grads = gradients
        self._optimizers = [optimizer] if optimizer is not None else []
        self._recorder: Recorder | None = None
        self._targets: list[tuple[str, nn.Module]] | None = None
        self._targets_key: Any = None  # cache key of the targets in the layout (None: not cacheable)
        self._layout: Layout | None = None
        self._grads: GradientCapture | None = None
        self._wrapper: str | None = None  # "ddp", "fsdp2" or None (see workbench.distributed.unwrap)
        self._t0 = 0.0

    # --- context manager ------------------------------------------------------------------------
    def __enter__(self) -> Trace:
        if self._recorder is not None:
            raise CaptureError("This Trace was already used; call workbench.trace(model) again for a new one.")
        if self._model is None or self._options is None:
            raise CaptureError("This Trace was loaded from disk; start a new one with workbench.trace(model).")
        self._recorder = Recorder(self._model, self._options, self._modules, self._targets, self._layout,
                                  self._targets_key)
        self._recorder.attach()
        try:
            if self._want_grads:
                self._grads = GradientCapture(self._model, final_grads=self._wrapper == "ddp")
                self._grads.attach()
                for opt in self._optimizers:
                    self._grads.watch_optimizer(opt)
        except BaseException:
            self._recorder.detach()
            raise
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Literal[False]:
        wall = time.perf_counter() - self._t0
        rec = self._recorder
        assert rec is not None  # set by __enter__
        try:
            if self._grads is not None:
                self._grads.detach()
        finally:
            rec.detach()
        try:
            self._collect(rec, wall)
        except Exception as err:  # never mask the user's own exception with a read-back failure
            if exc_type is None:
                raise
            import warnings

            warnings.warn(f"trace results incomplete after an error in the block: {err}", stacklevel=2)
        return False

    def watch_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Record update/weight ratios for steps `optimizer` takes inside the block (gradients=True)."""
        if self._grads is None:
            raise CaptureError("watch_optimizer needs trace(..., gradients=True), used inside the with block.")
        self._grads.watch_optimizer(optimizer)

    def _collect(self, rec: Recorder, wall: float) -> None:
        rec.finish()
        self.records = rec.records
        if rec.collector is not None:
            self.attention = rec.collector.records
        if self._grads is not None:
            self.gradients = self._grads.finish()
        model, opts, params, layout = self._model, self._options, rec.params, rec.layout
        assert opts is not None  # __enter__ refuses a trace without options
        first = params[0] if params else None
        self.meta = {
            "model": type(model).__name__,
            "device": str(first.device) if first is not None else "cpu",
            "dtype": str(first.dtype)[6:] if first is not None else None,
            "total_params": layout.total_params,  # requires_grad flags are restored by now, as at entry
            "trainable_params": layout.trainable_params,
            "param_bytes": layout.param_bytes,
            "options": {**dataclasses.asdict(opts), "gradients": self._want_grads},
            "attention_mode": rec.attention_mode,
            "attention_bytes": sum(a.map_bytes for a in self.attention),
            "saved_bytes": rec.saved.total_activation_bytes if rec.saved else None,
            "saved_bytes_outside": rec.saved.orphan_bytes if rec.saved else None,
            "wall_ms": wall * 1e3,
            "torch": torch.__version__,
        }
        self.meta.update(rank_meta(params, self.meta["saved_bytes"], self._wrapper, layout.param_bytes))
        items: list[ModuleRecord | AttentionRecord | ParamGradRecord] = [
            *self.records, *self.attention, *self.gradients
        ]
        for item in items:
            item.rank = self.meta["rank"]
        # Detach from the model so a finished trace holds no reference to it.
        self._model = None
        errors = list(dict.fromkeys(rec.collector.errors)) if rec.collector is not None else []
        if errors:  # raised here, with every hook already removed and the records kept
            raise CaptureError("attention selection could not apply: " + " ".join(errors[:3])
                               + (f" ({len(errors) - 3} more)" if len(errors) > 3 else ""))

    # --- queries --------------------------------------------------------------------------------
    def first_nonfinite(self, *, include_neginf: bool = False) -> ModuleRecord | None:
        """The first call, in completion order, whose output holds NaN or Inf (None if all finite).

        Completion order puts a child before the parent that returns its output, so this names the
        module where the values first went bad; `record.in_stats` tells whether its input was fine.
        Outputs whose only non-finite values are -Inf (masked attention scores) are skipped unless
        include_neginf=True. Needs stats=True."""
        bad = [r for r in self.records
               if r.nonfinite and r.out_stats is not None and (include_neginf or not r.out_stats.only_neginf)]
        return min(bad, key=lambda r: r.end_index) if bad else None

    def find(self, name: str) -> list[ModuleRecord]:
        """All calls of the module called `name`, in execution order."""
        return [r for r in self.records if r.name == name]

    def module_grad_norms(self) -> dict[str, float]:
        """Module path -> L2 norm of its own parameters' gradients (gradients=True)."""
        return module_norms(self.gradients)

    def module_memory(self) -> Any:
        """pandas DataFrame per module (first call order): param_bytes, grad_bytes, saved_bytes
        (summed over calls, own), saved_bytes_total, output_bytes. For memory panels."""
        import pandas as pd

        rows: dict[str, dict[str, Any]] = {}
        for r in self.records:
            row = rows.setdefault(r.name, dict(name=r.name, type=r.type, depth=r.depth, calls=0,
                                               param_bytes=r.param_bytes, grad_bytes=r.grad_bytes,
                                               saved_bytes=0, saved_bytes_total=0, output_bytes=0))
            row["calls"] += 1
            for k in ("saved_bytes", "saved_bytes_total", "output_bytes"):
                row[k] += getattr(r, k)
        return pd.DataFrame(list(rows.values()))

    def to_dataframe(self) -> Any:
        """One row per call; columns are documented in `workbench.capture.report.COLUMNS`."""
        return to_dataframe(self.records)

    def summary(self, max_depth: int | None = None, max_rows: int = 400) -> str:
        """A torchinfo-style text table from measured values (time, saved bytes, output stats)."""
        return summary_table(self, max_depth=max_depth, max_rows=max_rows)

    def report_html(self, path: str | Path, **kwargs: Any) -> Path:
        """Write a standalone HTML report (plotly.js inline, works offline) by the export registered in
        `workbench.display` (`workbench.viz.report_html`, whose keyword arguments it passes on)."""
        return export_html(self, path, **kwargs)

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        if not self.meta:
            state = "armed" if self._recorder is None else "recording"
            return f"Trace({type(self._model).__name__ if self._model else '?'}, {state})"
        parts = [f"{len(self.records)} calls of {len({r.name for r in self.records})} modules"]
        if self.attention:
            parts.append(f"{len(self.attention)} attention maps ({format_bytes(self.meta['attention_bytes'])})")
        if self.gradients:
            parts.append(f"gradients for {sum(g.grad_norm is not None for g in self.gradients)} params")
        bad = self.first_nonfinite()
        parts.append(f"first non-finite: {bad.display_name!r}" if bad else "all finite")
        return f"Trace({self.meta['model']}, {', '.join(parts)})"

    # --- torch.distributed ----------------------------------------------------------------------
    def gather(self, dst: int = 0, group: Any = None) -> Trace | None:
        """Every rank's records on rank `dst` (torch.distributed.gather_object; call on every rank).
        Returns the merged Trace on dst, None elsewhere, `self` outside torch.distributed."""
        return gather_trace(self, dst, group)

    @property
    def ranks(self) -> list[int]:
        """Ranks whose records this trace holds ([own rank] unless gathered)."""
        return trace_ranks(self)

    def for_rank(self, rank: int) -> Trace:
        """The single-rank Trace that `rank` recorded (from a gathered trace)."""
        return trace_for_rank(self, rank)

    def rank_memory(self) -> Any:
        """pandas DataFrame, one row per rank: the bytes of its parameter and gradient shards and of the
        activations it saved for backward, and the unsharded model's parameter bytes."""
        return rank_memory(self)

    # --- persistence ----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write one safetensors file: attention maps as tensors, everything else as JSON metadata.

        Missing parent folders are created, as `save_pretrained` creates its directory: the path says
        where the file should be, and a notebook user saving into `runs/today/` means just that.
        """
        if not self.meta:
            raise CaptureError("Nothing to save yet: save a trace after its with block has exited.")
        return serialize.write(self, path)

    @classmethod
    def load(cls, path: str | Path) -> Trace:
        """Read a file written by `save`. Never unpickles; malformed files raise CorruptFileError."""
        return serialize.read(path, cls)
