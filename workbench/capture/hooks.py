"""Attaching and detaching capture hooks, with the hygiene a notebook needs.

`Recorder.attach()` registers plain forward pre/post hooks through the interception layer's `module_hooks`
(post hooks also told of a forward that raised, so the module stack stays balanced) and `Recorder.detach()`
removes exactly what it registered, restores train/eval mode and requires_grad flags, and unpatches
SDPA/softmax.
A registry of modules under capture refuses a second, overlapping trace with a clear error instead
of stacking hooks.
"""

from __future__ import annotations

import contextlib
import operator
import time
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import torch
from torch import nn

from ..distributed.shards import local_tensor
from ..errors import CaptureError
from ..lm.intercept import module_hooks
from ..lm.observe import SdpaCall, pattern_sites, watch_attention
from ..model.layers import HookPoint
from .attention import AttentionCollector, AttentionSelection
from .layout import Layout, model_layout
from .memory import CudaAllocatorMeter, SavedTensorsMeter, layer_module_names, uses_allocator
from .records import ModuleRecord
from .select import ModuleFilter, select_modules
from .stats import StatsBuffer
from .timing import EventPool, event_pool, uses_cuda_events
from .walk import distinct_bytes, first_float, first_float_in, flatten_tensors, tensor_meta

_TRAINING, _REQUIRES_GRAD = operator.attrgetter("training"), operator.attrgetter("requires_grad")
_ACTIVE: dict[int, Recorder] = {}  # id(module) -> the recorder attached to it (cleared on detach)


@dataclass(frozen=True)
class CaptureOptions:
    shapes: bool = True
    timing: bool = True
    memory: bool = False
    stats: bool = True
    stats_modules: tuple[str, ...] | None = None  # with stats: only these recorded modules (None = all)
    samples: int = 0
    attention: AttentionSelection | None = None
    attention_source: str = "auto"  # "auto", "hooks" (workbench hook_pattern) or "intercept"


class Recorder:
    """Owns every hook of one trace; `records` fill in execution order while attached.

    It registers two process-wide module hooks (`module_hooks` of the interception layer) that look each
    called module up in a dict of this model's modules, instead of two hooks per module: attaching to a
    600-module model then costs two registrations, not 1,200 handles, and `HookPoint.is_hooked` stays False
    (no eager switch). The hooks are plain functions rather than an `intercept` client, and they keep the
    running-module stack that names the owner of an intercepted attention call themselves: an event object
    per module call, or the layer's own pair of stack hooks beside these, measured 13% and 10% of capture's
    overhead on a small model (benchmarks/capture_versus.py), on the path that every module call takes.
    """

    def __init__(self, model: nn.Module, options: CaptureOptions, modules: ModuleFilter = None,
                 targets: list[tuple[str, nn.Module]] | None = None, layout: Layout | None = None,
                 targets_key: Hashable | None = None) -> None:
        self.model, self.opt = model, options
        self.layout = layout if layout is not None else model_layout(model)
        self.targets = targets if targets is not None else select_modules(model, modules, self.layout.named)
        if not self.targets:
            raise CaptureError(f"modules={modules!r} matched no module; check model.named_modules().")
        # Caches derived from the targets are kept in the layout only when the targets came from a
        # cacheable filter (trace() passes its key); a predicate's targets are used for this trace only.
        self._targets_key = targets_key if targets is not None else None
        self.records: list[ModuleRecord] = []
        self.stats = StatsBuffer(options.samples)
        self.collector = AttentionCollector(options.attention) if options.attention else None
        self.attention_mode = "off"
        self.saved: SavedTensorsMeter | None = None
        self._static: dict[int, tuple | str] = {}  # id -> (name, type, param facts, stats on), or a name
        self._rec_stack: list[list] = []  # [record, t0, start_event]
        self._name_stack: list[str] = []  # every module entered (for attention attribution)
        self._calls: dict[str, int] = {}
        self._ended = 0
        self._members: dict[str, list[nn.Parameter]] = {}
        self.params: list[nn.Parameter] = []
        self._events: list[tuple[ModuleRecord, Any, Any]] = []
        self._cuda: CudaAllocatorMeter | None = None
        self._mem_layers: set[str] = set()
        self._modes: list[bool] = []  # each module's training flag at attach, in layout order
        self._flags: list[bool] = []  # each parameter's requires_grad at attach
        self._watch = contextlib.ExitStack()  # the module hooks and the observation layer's patches
        self._events_pool: EventPool | None = None  # CUDA timing events (None: perf_counter)
        self._stream: Any = None  # the stream they are recorded on (the model device's current stream)
        self.attached = False
        self._registered = False  # whether _ACTIVE holds this recorder's modules

    # --- attach / detach ------------------------------------------------------------------------
    def attach(self) -> None:
        layout = self.layout
        if not _ACTIVE.keys().isdisjoint(layout.ids):
            busy = [n for n, m in layout.named if id(m) in _ACTIVE]
            raise CaptureError(
                f"A trace is already attached to {busy[0] or type(self.model).__name__!r}. Nested traces "
                "on the same modules are not supported: finish the outer `with workbench.trace(...)` first, "
                "or call workbench.capture.detach_all(model) to clear a trace left open by hand."
            )
        self.params = params = layout.params
        self._modes = list(map(_TRAINING, layout.modules))
        self._flags = list(map(_REQUIRES_GRAD, params))
        try:
            _ACTIVE.update(dict.fromkeys(layout.ids, self))
            self._registered = True
            self._attach_hooks(layout.named, params)
        except BaseException:
            self.detach()
            raise
        self.attached = True

    def _static_table(self, intercept: bool) -> dict[int, tuple | str]:
        """id(module) -> (name, type, param facts, stats on) for recorded modules, or just the name for
        the other modules when attention is attributed to the innermost module (`intercept`)."""
        named, info = self.layout.named, self.layout.info
        table: dict[int, tuple | str] = {id(m): name for name, m in named} if intercept else {}
        only = None if self.opt.stats_modules is None else set(self.opt.stats_modules)
        table.update({
            id(m): (name, type(m).__name__, info[name], self.opt.stats and (only is None or name in only))
            for name, m in self.targets
        })
        return table

    def _attach_hooks(self, named: list[tuple[str, nn.Module]], params: list[nn.Parameter]) -> None:
        self._members = self.layout.members
        device = params[0].device if params else torch.device("cpu")
        if uses_cuda_events(device):  # events on the model device's stream, read after one sync at exit
            self._events_pool, self._stream = event_pool(device), torch.cuda.current_stream(device)
        if self.opt.memory and uses_allocator(device):
            self._cuda, self._mem_layers = CudaAllocatorMeter(device), layer_module_names(self.model)
        self._setup_attention(named)
        intercept = self.attention_mode == "intercept"
        key = self._targets_key and ("static", self._targets_key, self.opt.stats, self.opt.stats_modules, intercept)
        self._static = self.layout.derived(key, lambda: self._static_table(intercept))
        each = [m for _, m in self.targets] if self._hooks_each(intercept, named) else None
        self._watch.enter_context(module_hooks(self._pre, self._post, each))
        if self.opt.memory:
            self.saved = SavedTensorsMeter(lambda: self._rec_stack[-1][0] if self._rec_stack else None,
                                           lambda: {local_tensor(p).untyped_storage().data_ptr() for p in params})
            self.saved.__enter__()

    def _hooks_each(self, intercept: bool, named: list[tuple[str, nn.Module]]) -> bool:
        """Hook each recorded module rather than every module call of the process, when few are recorded.

        A process-wide hook sends every module call through `nn.Module`'s slow hook path (~20-70 us each on
        the CPU), so recording SmolLM2's 30 layers that way paid for its 397 modules. Attention attributed by
        interception needs the stack of every module, and a workbench `HookPoint` hooked directly switches
        its layer to eager attention, so both keep the process-wide pair."""
        if intercept or 4 * len(self.targets) > len(named):
            return False
        return not any(isinstance(m, HookPoint) for _, m in self.targets)

    def _setup_attention(self, named: list[tuple[str, nn.Module]]) -> None:
        if self.collector is None:
            return
        sites = pattern_sites(self.model, named)
        mode = self.opt.attention_source
        if mode == "auto":
            mode = "hooks" if sites else "intercept"
        if mode == "hooks":
            if not sites:
                raise CaptureError("attention_source='hooks' needs HookPoint sites named '*hook_pattern'.")
            wanted = []
            for i, (owner, site) in enumerate(sites):
                self.collector.assign_layer(owner, i)
                if self.collector.sel.wants_layer(i, owner):
                    wanted.append((owner, site))
            self._watch.enter_context(watch_attention(self, intercept=False, patterns=wanted))
        elif mode == "intercept":
            self._watch.enter_context(watch_attention(self))
        else:
            raise CaptureError(f"attention_source={mode!r} is unknown; use 'auto', 'hooks' or 'intercept'.")
        self.attention_mode = mode

    def detach(self) -> None:
        """Remove every handle this recorder registered and restore the model's flags. Idempotent."""
        try:
            self._watch.close()
            if self.saved is not None:
                self.saved.__exit__(None, None, None)
        finally:
            modules = self.layout.modules
            if self._modes and list(map(_TRAINING, modules)) != self._modes:  # compared without a Python loop
                for m, mode in zip(modules, self._modes):
                    if m.training != mode:
                        m.training = mode
            if self._flags and list(map(_REQUIRES_GRAD, self.params)) != self._flags:
                for p, flag in zip(self.params, self._flags):
                    if p.requires_grad != flag and p.is_leaf:
                        p.requires_grad_(flag)
            if self._registered:  # attach made every id of the layout ours, in one update
                self._registered = False
                deque(map(_ACTIVE.pop, self.layout.ids, repeat(None)), maxlen=0)
            self._rec_stack.clear()
            self._name_stack.clear()
            self.attached = False

    # --- hot path -------------------------------------------------------------------------------
    def _pre(self, module: nn.Module, args: tuple) -> None:
        static = self._static.get(id(module))
        if static is None:
            return
        if isinstance(static, str):  # stack-only module (attention attribution)
            self._name_stack.append(static)
            return
        name, typ, info, want_stats = static
        stack = self._rec_stack
        call = self._calls.get(name, 0)
        self._calls[name] = call + 1
        rec = ModuleRecord(len(self.records), name, typ, call, len(stack),
                           stack[-1][0].index if stack else -1, [], [], *info)
        self.records.append(rec)
        if want_stats:  # positional inputs now, before an in-place forward can change them
            x = first_float_in(args)
            if x is not None:
                rec.in_stats = self.stats.measure(x)
        if self._cuda is not None and name in self._mem_layers:
            self._cuda.enter(rec)
        self._name_stack.append(name)
        frame = [rec, 0.0, None, want_stats]
        if self.opt.timing:
            if self._events_pool is not None:
                ev = self._events_pool.get()
                ev.record(self._stream)
                frame[2] = ev
            else:
                frame[1] = time.perf_counter()
        stack.append(frame)

    def _post(self, module: nn.Module, args: tuple, *rest: Any) -> None:
        # (module, args, kwargs, output) normally; (module, args, output) when forward raised
        static = self._static.get(id(module))
        if static is None or not self._name_stack:
            return
        if isinstance(static, str):
            self._name_stack.pop()
            return
        kwargs, output = rest if len(rest) == 2 else ({}, rest[0])
        frame = self._rec_stack.pop()
        self._name_stack.pop()
        rec: ModuleRecord = frame[0]
        opt, want_stats = self.opt, frame[3]
        if opt.timing:
            if frame[2] is not None:
                assert self._events_pool is not None  # a start event exists only when the pool does
                end = self._events_pool.get()
                end.record(self._stream)
                self._events.append((rec, frame[2], end))
            else:
                rec.time_ms = (time.perf_counter() - frame[1]) * 1e3
        if opt.shapes:
            inputs: list[tuple[str, torch.Tensor]] = []
            flatten_tensors(args, "args", inputs)
            if kwargs:
                flatten_tensors(kwargs, "kwargs", inputs)
            rec.inputs = [tensor_meta(p, t) for p, t in inputs]
        if want_stats and rec.in_stats is None and kwargs:  # keyword-only inputs (HF layers)
            x = first_float_in(tuple(kwargs.values()))
            if x is not None:
                rec.in_stats = self.stats.measure(x)
        if opt.shapes or want_stats or opt.memory:
            if isinstance(output, torch.Tensor):  # the common case: no walk
                if opt.shapes:
                    rec.outputs = [tensor_meta("out", output)]
                if opt.memory:
                    rec.output_bytes = output.nbytes
                x = output if output.is_floating_point() else None
            else:
                flat: list[tuple[str, torch.Tensor]] = []
                flatten_tensors(output, "out", flat)
                if opt.shapes:
                    rec.outputs = [tensor_meta(p, t) for p, t in flat]
                if opt.memory:
                    rec.output_bytes = distinct_bytes(t for _, t in flat)
                x = first_float(flat)
            if want_stats and x is not None:
                rec.out_stats = self.stats.measure(x)
                self.stats.sample(rec, x)
        if self._cuda is not None and rec.name in self._mem_layers:
            self._cuda.exit(rec)
        rec.finished = len(rest) == 2
        rec.end_index = self._ended
        self._ended += 1

    # --- attention listener (called by the observation layer) -----------------------------------
    def on_pattern(self, module: str, probs: torch.Tensor) -> None:
        if self.collector is not None:
            self.collector.add_probs(module, "hook", probs)

    def on_sdpa(self, call: SdpaCall) -> None:
        if not self._name_stack or self.collector is None:
            return
        module = self._name_stack[-1]
        if self.collector.wants(module):
            self.collector.add_sdpa(module, call)

    def wants_probabilities(self, call: SdpaCall) -> bool:
        """Asked by the observation layer before an SDPA call: compute it from its probabilities?"""
        if not self._name_stack or self.collector is None or not self.collector.wants(self._name_stack[-1]):
            return False
        return self.collector.covers_most(call)

    def on_softmax(self, _scores: torch.Tensor, probs: torch.Tensor) -> None:
        if self._name_stack and self.collector is not None and self.collector.wants(self._name_stack[-1]):
            self.collector.add_probs(self._name_stack[-1], "softmax", probs)

    on_folded_softmax = on_softmax  # (N, 1, T, T): recorded as the call says, N batch rows of one head

    # --- exit -----------------------------------------------------------------------------------
    def finish(self) -> None:
        """Single host synchronisation: CUDA event times, device stats, attention metrics."""
        if self._events:
            self._stream.synchronize()  # the model device's stream, not the current device's
            assert self._events_pool is not None  # events are recorded only when the pool exists
            for rec, start, end in self._events:
                rec.time_ms = start.elapsed_time(end)
            self._events_pool.put(ev for _, start, end in self._events for ev in (start, end))
            self._events.clear()
        self.stats.flush()
        if self.collector is not None:
            self.collector.finish()
        child_ms = [0.0] * len(self.records)
        for rec in self.records:
            if rec.parent >= 0 and rec.time_ms is not None:
                child_ms[rec.parent] += rec.time_ms
        for rec in reversed(self.records):  # children come after parents, so totals roll upward
            rec.saved_bytes_total += rec.saved_bytes
            if rec.parent >= 0:
                self.records[rec.parent].saved_bytes_total += rec.saved_bytes_total
            if rec.time_ms is not None:
                rec.self_time_ms = max(0.0, rec.time_ms - child_ms[rec.index])
        grad_bytes = {id(p): p.grad.numel() * p.grad.element_size()
                      for p in self.params if p.grad is not None}
        if grad_bytes:
            for rec in self.records:
                rec.grad_bytes = sum(grad_bytes.get(id(p), 0) for p in self._members.get(rec.name, ()))


def detach_all(model: nn.Module) -> int:
    """Remove every workbench trace still attached to `model` (e.g. one entered by hand and never
    exited). Returns how many were removed. The user's own hooks are left alone."""
    recorders = {id(r): r for m in model.modules() if (r := _ACTIVE.get(id(m))) is not None}
    for r in recorders.values():
        r.detach()
    return len(recorders)
