"""What every widget shares: the `View` base (a VBox with save_html/save_png), notices, and styling."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go
import traitlets

from ..errors import InputError
from ..safehtml import html, is_safe, join, static, text
from ..viz.export import save_png, write_html
from ..viz.style import FULL_WIDTH

CSS = """<style>
.wb-view { font-family: Inter, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif; }
.wb-title { font-size: 16px; font-weight: 600; color: #222; }
.wb-mono select, .wb-mono .widget-label, .wb-mono { font-family: ui-monospace, Menlo, Consolas, monospace !important;
  font-size: 11.5px !important; }
.wb-table select { height: 320px !important; white-space: pre; }
.wb-notice { background: #F4F7FB; border-left: 4px solid #4C72B0; padding: 8px 12px; color: #333;
  font-size: 13px; border-radius: 3px; }
.wb-notice code { background: #e8edf5; padding: 1px 4px; border-radius: 3px; }
</style>"""
STYLE = static(CSS)


class SafeHTML(W.HTML):
    """The only HTML widget the views use: a value that is not `safehtml` Markup is escaped on
    assignment, so text from a trace (module names, tokens, notes) can never become markup."""

    @traitlets.validate("value")
    def _escape_plain(self, proposal: Any) -> str:
        value = proposal["value"]
        return value if is_safe(value) else text(value)


def notice(message: str) -> SafeHTML:
    """A friendly info box (used instead of a traceback when records lack what a view shows).

    Text between backticks is rendered as code."""
    parts = str(message).split("`")
    body = join("", (html("<code>{}</code>", p) if i % 2 else p for i, p in enumerate(parts)))
    box = SafeHTML(html("<div class='wb-notice'>{}</div>", body))
    box.add_class("wb-notice-box")
    return box


def header(title: str, subtitle: str = "") -> SafeHTML:
    sub = html(" <span style='color:#888;font-weight:400;font-size:13px'>{}</span>", subtitle) if subtitle else ""
    return SafeHTML(html("{}<div class='wb-title'>{}{}</div>", STYLE, title, sub))


def figure_widget(fig: go.Figure, width: int | None = None, height: int | None = None) -> go.FigureWidget:
    """A FigureWidget from a viz figure, with a fixed pixel size (plotly needs anywidget for this).

    The size is fixed because the widget's autosize does not follow the notebook column; the width
    sticks across `replace_figure` redraws."""
    w = go.FigureWidget(json_safe(fig))
    w.layout.width = width or fig.layout.width or FULL_WIDTH
    if height:
        w.layout.height = height
    return w


class View(W.VBox):
    """Base of every workbench widget: a VBox that knows its figures, for export."""

    title = "workbench view"

    def __init__(self, children: list[W.Widget] | tuple = (), **kwargs: Any) -> None:
        super().__init__(children=list(children), **kwargs)
        self.add_class("wb-view")
        self.layout.width = "100%"

    def figures(self) -> list[go.Figure]:
        """The figures currently shown, in display order (FigureWidgets included)."""
        return [w for w in _walk(self) if isinstance(w, go.FigureWidget)]

    def export_parts(self) -> list[Any]:
        """HTML strings and figures written by `save_html` (override to add text)."""
        return [html_value(w) for w in _walk(self) if isinstance(w, W.HTML) and "wb-notice" in w.value] + self.figures()

    def save_html(self, path: str | Path) -> Path:
        """Write what the view shows now to a standalone HTML file (plotly.js inline, works offline)."""
        return write_html(path, self.title, self.export_parts())

    def static_figure(self) -> Any:
        """A matplotlib Figure for PNG export (views without one raise)."""
        raise InputError(f"{type(self).__name__} has no static picture; use save_html instead.")

    def save_png(self, path: str | Path, dpi: int = 150) -> Path:
        """PNG of the view's static (matplotlib) variant."""
        import matplotlib.pyplot as plt

        fig = self.static_figure()
        try:
            return save_png(fig, path, dpi=dpi)
        finally:
            plt.close(fig)


def html_value(widget: W.HTML) -> Any:
    """A widget's HTML for export: SafeHTML values are Markup already; any other value is escaped on the page."""
    return widget.value


def _walk(widget: W.Widget):
    """Depth-first walk over a widget tree, children in order."""
    yield widget
    for child in getattr(widget, "children", ()):
        yield from _walk(child)


_DATA = ("x", "y", "z", "customdata")


def json_safe(fig: go.Figure) -> go.Figure:
    """`fig` with every NaN or infinity in its traces' data as None: a widget's state travels as JSON, which has
    no NaN (plotly draws None as a gap, as it draws NaN)."""
    for trace in fig.data:
        for name in _DATA:
            value = getattr(trace, name, None) if name in trace else None
            if value is not None and _has_nonfinite(value):
                trace[name] = _gaps(value)
    return fig


def _has_nonfinite(value: Any) -> bool:
    try:
        array = np.asarray(value, dtype=float)
    except (TypeError, ValueError):  # text, ragged lists, None already in place
        return False
    return not bool(np.isfinite(array).all())


def _gaps(value: Any) -> Any:
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_gaps(v) for v in value]
    return None if isinstance(value, (float, np.floating)) and not math.isfinite(value) else value


def replace_figure(target: go.FigureWidget, fig: go.Figure) -> None:
    """Swap a FigureWidget's traces and layout for those of `fig` (for views whose trace count changes)."""
    fig = json_safe(fig)
    if len(target.data) == len(fig.data) and all(a.type == b.type for a, b in zip(target.data, fig.data)):
        with target.batch_update():
            for old, new in zip(target.data, fig.data):
                old.update(new.to_plotly_json(), overwrite=True)
            _set_layout(target, fig)
        return
    target.data = []
    target.add_traces(list(fig.data))
    _set_layout(target, fig)


def _set_layout(target: go.FigureWidget, fig: go.Figure) -> None:
    """Copy the layout; annotations and shapes are replaced, not merged (a stale message would linger)."""
    width = target.layout.width
    target.update_layout(fig.layout.to_plotly_json(), overwrite=True)
    target.layout.annotations = fig.layout.annotations or ()
    target.layout.shapes = fig.layout.shapes or ()
    target.layout.width = width


def row(*items: W.Widget) -> W.HBox:
    """Side-by-side panels of fixed width (figures carry their own width, see viz.style.FULL_WIDTH).

    The row wraps: in a column narrower than the panels they stack instead of being clipped."""
    boxes = [W.Box([item], layout=W.Layout(flex="0 0 auto", max_width="100%", overflow="visible")) for item in items]
    return W.HBox(boxes, layout=W.Layout(width="100%", flex_flow="row wrap", align_items="flex-start"))


def check_arg(name: str, value: Any, ok: bool, expected: str) -> None:
    """Refuse a widget argument of the wrong kind with an InputError that says what was expected."""
    if not ok:
        raise InputError(f"{name} must be {expected}, got {type(value).__name__} {value!r:.80}.")


def is_count(value: Any, low: int = 1) -> bool:
    """An int (not a bool) that is at least `low`."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= low
