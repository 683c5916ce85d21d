"""`LayerInspector`: the module table (filter, sort, depth) with a detail panel and activation histogram."""

from __future__ import annotations

from typing import Any

import ipywidgets as W

from ..capture.trace import Trace
from ..safehtml import html
from ..viz.modules import COLUMNS, SORT_KEYS, activation_histogram, detail_html, filter_records, module_row
from ..viz.style import FULL_WIDTH, format_bytes, format_count, format_ms
from .base import SafeHTML, View, check_arg, figure_widget, header, is_count, notice, replace_figure, row

# characters per column: 127 in all, about 850 px at 11.5 px monospace, inside a 900 px notebook column
WIDTHS = {"module": 31, "type": 14, "out shape": 18, "params": 8, "time": 9, "memory": 9, "mean": 9,
          "std": 8, "absmax": 8, "NaN": 4}
HIST_WIDTH = 540  # the activation histogram; the detail panel takes the rest of FULL_WIDTH
NBSP = "\u00a0"  # option labels collapse ordinary spaces; non-breaking ones keep the columns aligned
NO_RECORDS = "No module records. Run the model inside `with workbench.trace(model) as tr:` and pass `tr`."


def _cell(text: str, width: int, left: bool) -> str:
    text = text if len(text) <= width else text[: width - 1] + "…"
    return (text.ljust(width) if left else text.rjust(width)).replace(" ", NBSP)


def row_text(row: dict[str, str]) -> str:
    """One fixed-width table line (the Select widget is the table; monospace keeps columns aligned)."""
    return NBSP.join(_cell(row[c], WIDTHS[c], c in ("module", "type", "out shape")) for c in COLUMNS)


class LayerInspector(View):
    """One row per module call: name, type, shapes, params, time, memory, activation stats, NaN flag.

    Type in the filter box (name or type), pick a sort order or a depth; select a row for its
    shapes, stats and an activation histogram (trace with samples=N for the histogram)."""

    title = "Layer inspector"

    def __init__(self, trace: Trace | None, *, max_rows: int = 2000) -> None:
        check_arg("trace", trace, trace is None or isinstance(trace, Trace),
                  "a Trace (from `with workbench.trace(model) as tr:`) or None")
        check_arg("max_rows", max_rows, is_count(max_rows), "an integer >= 1")
        super().__init__()
        self.trace, self.max_rows = trace, max_rows
        records = list(getattr(trace, "records", []) or [])
        if not records:
            self.children = [header(self.title), notice(NO_RECORDS)]
            return
        self._by_index = {r.index: r for r in records}
        max_depth = max(r.depth for r in records)
        self.filter = W.Text(placeholder="filter: name or type (e.g. attn, Linear)", layout=W.Layout(width="270px"))
        self.sort = W.Dropdown(options=list(SORT_KEYS), value="order", description="Sort",
                               layout=W.Layout(width="160px"))
        self.sort.style.description_width = "36px"
        self.depth = W.IntSlider(value=max_depth, min=0, max=max_depth, description="Max depth",
                                 layout=W.Layout(width="230px"))
        self.depth.style.description_width = "70px"
        self.nonfinite = W.Checkbox(value=False, description="only NaN/Inf", indent=False,
                                    layout=W.Layout(width="120px"))
        self.table = W.Select(options=[], rows=18, layout=W.Layout(width=f"{FULL_WIDTH}px", max_width="100%"))
        self.table.add_class("wb-mono")
        self.table.add_class("wb-table")
        self.count = SafeHTML()
        self.columns = SafeHTML(html("<div class='wb-mono' style='color:#555;font-weight:600;white-space:pre;"
                                     "padding-left:4px'>{}</div>", row_text({c: c for c in COLUMNS})))
        self.detail = SafeHTML(html("<i style='color:#888'>Select a row to inspect it.</i>"))
        self.histogram = figure_widget(activation_histogram(None, width=HIST_WIDTH), width=HIST_WIDTH)
        for w in (self.filter, self.sort, self.depth, self.nonfinite):
            w.observe(self._refresh, names="value")
        self.table.observe(self._on_select, names="value")
        self._refresh()
        self.children = [
            header(self.title, self._subtitle(records)),
            W.HBox([self.filter, self.sort, self.depth, self.nonfinite, self.count],
                   layout=W.Layout(flex_flow="row wrap", align_items="center")),
            self.columns, self.table,
            row(W.Box([self.detail], layout=W.Layout(padding="6px", width=f"{FULL_WIDTH - HIST_WIDTH}px")),
                self.histogram),
        ]

    def _subtitle(self, records: list) -> str:
        meta = getattr(self.trace, "meta", {}) or {}
        bad = self.trace.first_nonfinite() if self.trace is not None else None
        parts = [f"{len(records)} calls", f"{format_count(meta.get('total_params', 0))} params",
                 format_bytes(meta.get("param_bytes")), f"wall {format_ms(meta.get('wall_ms'))}",
                 f"first non-finite: {bad.display_name}" if bad else "all finite"]
        return " · ".join(parts)

    @property
    def rows(self) -> list:
        """The records currently listed, in table order."""
        return [self._by_index[i] for _, i in self.table.options]

    def _refresh(self, _change: Any = None) -> None:
        shown = filter_records(list(self._by_index.values()), text=self.filter.value, sort=self.sort.value,
                               max_depth=self.depth.value, only_nonfinite=self.nonfinite.value)
        self.table.options = [(row_text(module_row(r)), r.index) for r in shown[: self.max_rows]]
        more = f" (first {self.max_rows})" if len(shown) > self.max_rows else ""
        self.count.value = html("<span style='color:#666;white-space:nowrap'>{} of {} rows{}</span>",
                                len(shown), len(self._by_index), more)

    def _on_select(self, change: Any) -> None:
        if change["new"] is None:
            return
        self.select(change["new"])

    def select(self, index: int) -> None:
        """Open the detail panel of the call with this record index."""
        r = self._by_index[index]
        self.detail.value = detail_html(r)
        replace_figure(self.histogram, activation_histogram(r, width=HIST_WIDTH))
        if self.table.value != index and index in [i for _, i in self.table.options]:
            self.table.value = index

    def export_parts(self) -> list[Any]:
        from ..viz.modules import html_table, time_bars

        return [html_table(self.rows), time_bars(list(self._by_index.values())), self.detail.value] + self.figures()
