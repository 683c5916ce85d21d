"""`MemoryPanel`: per-layer stacked memory of a trace or a generation session, plus KV-cache growth."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import ipywidgets as W
import torch
from torch import nn

from ..capture.trace import Trace
from ..lm.caches import ForeignCache
from ..model.cache import KVCache
from ..viz import memory as vm
from ..viz.style import FULL_WIDTH
from .base import View, check_arg, figure_widget, header, notice, replace_figure

if TYPE_CHECKING:
    from typing_extensions import TypeIs

    from ..generation.session import GenerationSession


class MemoryPanel(View):
    """`MemoryPanel(trace, model=..., optimizer=...)` or `MemoryPanel(session)`.

    Bars: parameters, gradients, saved activations, optimizer state (from the optimizer's state
    tensors) and KV cache, per layer. With a GenerationSession, the KV growth chart follows the
    session: call `update()` after stepping (GenerationStepper does this for you).
    """

    title = "Memory"

    def __init__(self, source: Trace | GenerationSession | None, *, model: nn.Module | None = None,
                 optimizer: torch.optim.Optimizer | None = None, cache: KVCache | ForeignCache | None = None) -> None:
        check_arg("source", source, source is None or isinstance(source, Trace) or _is_session(source),
                  "a Trace, a GenerationSession or None")
        check_arg("model", model, model is None or isinstance(model, nn.Module), "an nn.Module or None")
        check_arg("optimizer", optimizer, optimizer is None or isinstance(optimizer, torch.optim.Optimizer),
                  "a torch.optim.Optimizer or None")
        check_arg("cache", cache, cache is None or isinstance(cache, (KVCache, ForeignCache)),
                  "a KV cache (workbench.KVCache or a session's cache) or None")
        super().__init__()
        self.session: GenerationSession | None = None
        self.trace: Trace | None = None
        if _is_session(source):
            self.session = source
        else:
            self.trace = source
        self.model = self.session.model if self.session is not None else model
        self.optimizer, self._cache = optimizer, cache
        self.hints = W.VBox()
        self.bars = figure_widget(vm.memory_bars({}, width=FULL_WIDTH))
        self.growth = figure_widget(vm.kv_growth([], width=FULL_WIDTH))
        self.children = [header(self.title), self.hints, self.bars] + ([self.growth] if self.session else [])
        self.update()

    @property
    def cache(self) -> KVCache | ForeignCache | None:
        return self.session.cache if self.session is not None else self._cache

    def breakdown(self) -> dict[str, dict[str, int]]:
        """Bytes per layer group and kind (see `workbench.viz.memory.memory_breakdown`)."""
        return vm.memory_breakdown(self.trace, model=self.model, optimizer=self.optimizer, cache=self.cache)

    def update(self) -> None:
        """Recompute from the current state (optimizer state, cache, session steps) and redraw."""
        rows = self.breakdown()
        replace_figure(self.bars, vm.memory_bars(rows, note=vm.cuda_peak_note(self.trace), width=FULL_WIDTH))
        if self.session is not None:
            replace_figure(self.growth, vm.kv_growth(self.session.history, width=FULL_WIDTH))
        self.hints.children = [notice(t) for t in self._hints(rows)]

    def _hints(self, rows: dict[str, dict[str, int]]) -> list[str]:
        """What is missing from the picture and how to capture it."""
        if self.session is not None:
            return []
        tr = self.trace
        if tr is None or not getattr(tr, "records", None):
            return ["No trace records. Run the model inside `with workbench.trace(model, memory=True) as tr:` "
                    "and pass `tr`."]
        out = []
        opts = (getattr(tr, "meta", {}) or {}).get("options", {})
        if not opts.get("memory"):
            out.append("Saved activations not measured: trace with `workbench.trace(model, memory=True)` and run "
                       "the forward with gradients enabled.")
        if not any(v["grads"] for v in rows.values()):
            out.append("No gradients: trace with `gradients=True` and call `loss.backward()` inside the block.")
        if self.optimizer is None:
            out.append("Optimizer state not shown: pass `optimizer=opt, model=model` to include it.")
        return out

    def static_figure(self) -> Any:
        return vm.memory_bars_mpl(self.breakdown())


def _is_session(source: object) -> TypeIs[GenerationSession]:
    """A GenerationSession, or anything else that offers its `history` and `cache`, is drawn as one."""
    return hasattr(source, "history") and hasattr(source, "cache")
