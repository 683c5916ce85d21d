"""`GradientFlow`: per-module gradient norms (log scale, bands) and a module x step heatmap, live."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import ipywidgets as W

from ..capture.gradients import GradientHistory
from ..safehtml import html, join
from ..viz import gradients as vg
from ..viz.style import FULL_WIDTH
from .base import SafeHTML, View, check_arg, figure_widget, header, notice, replace_figure

if TYPE_CHECKING:
    from ..capture.trace import Trace


class GradientFlow(View):
    """Gradient flow of a `GradientHistory` (or a Trace taken with gradients=True).

    Live: the widget listens to `history.append(...)` and redraws at most once per `min_interval`
    seconds (drawing costs a few ms; a training step may be faster). Call `update()` after the
    loop to draw the last steps, and `close()` to stop listening.
    """

    title = "Gradient flow"

    def __init__(self, history: GradientHistory | Trace, *, min_interval: float = 0.5) -> None:
        check_arg("min_interval", min_interval, isinstance(min_interval, (int, float))
                  and not isinstance(min_interval, bool) and min_interval >= 0, "a number of seconds >= 0")
        history = vg.as_history(history)  # refused before the widget exists
        super().__init__()
        self.history: GradientHistory = history
        self.min_interval = min_interval
        self.draws = 0  # redraws so far (the throttle's effect is visible here)
        self._last = 0.0
        self._pending = False
        self.notice = notice(vg.NO_GRADIENTS)
        self.flags = SafeHTML()
        self.step = W.IntSlider(0, 0, 0, description="Step", continuous_update=False, layout=W.Layout(width="420px"))
        self.follow = W.Checkbox(value=True, description="follow latest", indent=False)
        self.bars = figure_widget(vg.grad_norm_bars(self.history), width=FULL_WIDTH)
        self.heatmap = figure_widget(vg.grad_heatmap(self.history), width=FULL_WIDTH)
        self.step.observe(self._on_step, names="value")
        self._unsubscribe = self.history.on_append(self._on_append)
        self.children = [header(self.title), self.notice, W.HBox([self.step, self.follow]), self.flags,
                         self.bars, self.heatmap]
        self._draw()

    def _on_append(self, _history: GradientHistory) -> None:
        now = time.perf_counter()
        if now - self._last >= self.min_interval:
            self._draw()
        else:
            self._pending = True

    def _on_step(self, _change: Any) -> None:
        if self.history.norms:
            self.follow.value = self.step.value == len(self.history.steps) - 1
            replace_figure(self.bars, vg.grad_norm_bars(self.history, self.step.value))

    def update(self) -> None:
        """Redraw now (e.g. after the training loop, for steps the throttle skipped)."""
        self._draw()

    def _draw(self) -> None:
        self._last, self._pending = time.perf_counter(), False
        self.draws += 1
        h = self.history
        self.notice.layout.display = "none" if h.norms else "flex"
        n = len(h.steps)
        self.step.max = max(0, n - 1)
        if self.follow.value:
            self.step.unobserve(self._on_step, names="value")
            self.step.value = max(0, n - 1)
            self.step.observe(self._on_step, names="value")
        replace_figure(self.bars, vg.grad_norm_bars(h, self.step.value if h.norms else -1))
        replace_figure(self.heatmap, vg.grad_heatmap(h))
        flagged = h.flagged()
        self.flags.value = "" if not flagged else html(
            "<div style='color:#C44E52;font-size:12px'><b>Flagged modules</b> (outside [{:g}, {:g}]): {}</div>",
            h.vanishing, h.exploding,
            join(", ", (html("{} ({} steps)", m, len(s)) for m, s in list(flagged.items())[:12])))

    def close(self) -> None:
        """Stop listening to the history, then close the widget."""
        unsubscribe = getattr(self, "_unsubscribe", None)
        if unsubscribe is not None:
            unsubscribe()
        super().close()

    def static_figure(self) -> Any:
        return vg.grad_flow_mpl(self.history)
