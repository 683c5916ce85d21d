"""`RunView`: a training run's file, watched while a job in another process writes it.

The view polls the file: `refresh()` reads the newest commit and redraws only when the run grew (a new step,
event or replay), so polling an idle file costs one small query. `auto=True` polls from a daemon thread every
`interval` seconds (ipywidgets sends updates from any thread); `close()` stops it. Clicking a trigger marker on
the loss curve, or picking a replayed step from the dropdown, opens that step's saved trace in the layer
inspector, gradient-flow and attention views, with the first module gone wrong and the doctor's findings.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import ipywidgets as W

from ..capture.trace import Trace
from ..errors import RunFileError
from ..runs import RunFile
from ..viz import runs as vr
from ..viz.style import FULL_WIDTH
from .attention import AttentionView
from .base import SafeHTML, View, check_arg, figure_widget, header, notice, replace_figure
from .gradients import GradientFlow
from .inspector import LayerInspector

NO_RUN = "No run to show yet: {}"


class RunView(View):
    """The live view of the run file at `path` (or an open `RunFile`).

    interval: seconds between polls of the auto-refresh thread; auto: start that thread now (False: call
    `refresh()` or press Refresh). `draws` counts redraws, `replay` is the Trace of the open step."""

    title = "Training run"

    def __init__(self, path: str | Path | RunFile, *, interval: float = 1.0, auto: bool = True) -> None:
        check_arg("interval", interval, isinstance(interval, (int, float)) and not isinstance(interval, bool)
                  and interval > 0, "a number of seconds > 0")
        check_arg("path", path, isinstance(path, (str, Path, RunFile)), "a run file's path or a workbench.RunFile")
        super().__init__()
        self.path = path.path if isinstance(path, RunFile) else Path(path)
        self.run: RunFile | None = path if isinstance(path, RunFile) else None
        self.interval = interval
        self.draws = 0
        self.replay: Trace | None = None
        self._seen: tuple[Any, ...] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.status = SafeHTML()
        self.notice = notice(NO_RUN.format("waiting for the job's first commit."))
        self.refresh_button = W.Button(description="Refresh", icon="refresh")
        self.refresh_button.on_click(lambda _b: self.refresh())
        self.steps = W.Dropdown(options=[("(pick a replayed step)", None)], value=None, description="Replayed")
        self.steps.observe(self._on_pick, names="value")
        self.loss = figure_widget(vr.loss_curve_empty(), width=FULL_WIDTH)
        self.heatmaps = {name: figure_widget(vr.empty_heatmap(name), width=FULL_WIDTH) for name in vr.HEATMAPS}
        self.entropy = figure_widget(vr.empty_entropy(), width=FULL_WIDTH)
        self.loss.data[1].on_click(self._on_click)
        self.detail = W.VBox()
        self.children = [header(self.title, str(self.path.name)), self.notice,
                         W.HBox([self.refresh_button, self.steps]), self.status, self.loss,
                         *self.heatmaps.values(), self.entropy, self.detail]
        self.refresh()
        if auto:
            self.start()

    # --- polling --------------------------------------------------------------------------------
    def start(self) -> None:
        """Poll the file every `interval` seconds from a daemon thread (until `stop()` or `close()`)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, name=f"RunView({self.path.name})", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the auto-refresh thread (the view stays; `refresh()` still works)."""
        if not hasattr(self, "_stop"):  # closed before it was built (ipywidgets closes in __del__)
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5 * self.interval + 1)
            self._thread = None

    @property
    def polling(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.refresh()
            except RunFileError:  # a file replaced or cut mid-run: say so, keep polling
                continue

    def refresh(self) -> bool:
        """Read the file; redraw if the run grew since the last draw. Returns whether it redrew."""
        with self._lock:
            run = self._open()
            if run is None:
                return False
            seen = (run.last_step, len(run.events()), len(run.replays()), tuple(run.metrics()))
            if seen == self._seen:
                return False
            self._seen = seen
            self._draw(run)
            return True

    def _open(self) -> RunFile | None:
        if self.run is None:
            try:
                self.run = RunFile(self.path)
            except RunFileError as err:
                self.notice.value = notice(NO_RUN.format(err)).value
                self.notice.layout.display = "flex"
                return None
        self.notice.layout.display = "none"
        return self.run

    def _draw(self, run: RunFile) -> None:
        self.draws += 1
        self.status.value = vr.summary(run)
        replace_figure(self.loss, vr.loss_curve(run))
        for name, widget in self.heatmaps.items():
            replace_figure(widget, vr.metric_heatmap(run, name))
        replace_figure(self.entropy, vr.attention_entropy(run))
        picked = self.steps.value
        options: list[tuple[str, int | None]] = [("(pick a replayed step)", None)]
        options += [(f"step {r.step}" + (f" · {r.first_module}" if r.first_module else ""), r.step)
                    for r in run.replays()]
        self.steps.options = options
        self.steps.value = picked if picked in [v for _, v in options] else None

    # --- a replayed step ------------------------------------------------------------------------
    def _on_click(self, _trace: Any, points: Any, _state: Any) -> None:
        for i in getattr(points, "point_inds", []):
            step = int(self.loss.data[1].customdata[i])
            self.steps.value = step if step in [v for _, v in self.steps.options] else self.steps.value

    def _on_pick(self, change: Any) -> None:
        if change["new"] is not None:
            self.open_step(change["new"])

    def open_step(self, step: int) -> Trace:
        """Open the replayed `step`'s trace below the figures: its findings, then the layer inspector,
        gradient flow and attention views. Returns the trace."""
        run = self._open()
        replays = {r.step: r for r in run.replays()} if run is not None else {}
        if run is None or step not in replays:
            raise RunFileError(f"step {step} was not replayed; the replayed steps are {sorted(replays)}.")
        record = replays[step]
        tr = Trace.load(run.trace_path(record))
        self.replay = tr
        tabs = W.Tab(children=[LayerInspector(tr), GradientFlow(tr), AttentionView(tr)],
                     titles=["Layer inspector", "Gradient flow", "Attention"])
        self.detail.children = [SafeHTML(vr.findings_html(record)), tabs]
        return tr

    # --- export and closing ---------------------------------------------------------------------
    def export_parts(self) -> list[Any]:
        run = self._open()
        if run is None:
            return super().export_parts()
        return [vr.summary(run), *self.figures(),
                *(vr.findings_html(r) for r in run.replays())]

    def close(self) -> None:
        """Stop polling, close the run file, then close the widget."""
        self.stop()
        if getattr(self, "run", None) is not None:
            self.run.close()  # type: ignore[union-attr]  # checked above
        super().close()
