"""Module-table rows and per-module figures for the layer inspector (from `ModuleRecord`s)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from ..capture.records import ModuleRecord, TensorMeta
from ..safehtml import Markup, html, join
from .style import COLORS, base_layout, format_bytes, format_count, format_ms, message_figure

SORT_KEYS = {
    "order": lambda r: r.index, "time": lambda r: -(r.time_ms or 0.0), "self time": lambda r: -(r.self_time_ms or 0.0),
    "params": lambda r: -r.params, "memory": lambda r: -(r.output_bytes + r.saved_bytes),
    "absmax": lambda r: -(r.out_stats.absmax if r.out_stats and math.isfinite(r.out_stats.absmax) else math.inf
                          if r.nonfinite else 0.0),
    "name": lambda r: r.name,
}
COLUMNS = ("module", "type", "out shape", "params", "time", "memory", "mean", "std", "absmax", "NaN")


def module_row(r: ModuleRecord) -> dict[str, str]:
    """Display strings for one call: the columns of the inspector table."""
    st = r.out_stats
    return {
        "module": "  " * r.depth + r.display_name + (f" #{r.call}" if r.call else ""),
        "type": r.type,
        "out shape": r.outputs[0].short() if r.outputs else "-",
        "params": format_count(r.params) if r.params else "-",
        "time": format_ms(r.time_ms),
        "memory": format_bytes(r.output_bytes + r.saved_bytes) if (r.output_bytes or r.saved_bytes) else "-",
        "mean": f"{st.mean:.3g}" if st else "-",
        "std": f"{st.std:.3g}" if st else "-",
        "absmax": f"{st.absmax:.3g}" if st else "-",
        "NaN": ("NaN" if st.nan else "Inf") if st and st.nonfinite and not st.only_neginf else "",
    }


def filter_records(records: Sequence[ModuleRecord], *, text: str = "", sort: str = "order",
                   max_depth: int | None = None, only_nonfinite: bool = False) -> list[ModuleRecord]:
    """Records whose name or type contains `text` (case-insensitive), sorted by one of SORT_KEYS."""
    t = text.strip().lower()
    out = [r for r in records
           if (not t or t in r.name.lower() or t in r.type.lower())
           and (max_depth is None or r.depth <= max_depth)
           and (not only_nonfinite or r.nonfinite)]
    return sorted(out, key=SORT_KEYS[sort])


def html_table(records: Sequence[ModuleRecord], *, max_rows: int = 300) -> Markup:
    """A plain HTML table of module rows (class "wb"), for reports."""
    head = join("", (html("<th>{}</th>", c) for c in COLUMNS))
    body = []
    for r in records[:max_rows]:
        row = module_row(r)
        cells = join("", (html("<td>{}</td>", _indent(row[c])) for c in COLUMNS))
        body.append(html('<tr style="background:#fde8e8">{}</tr>', cells) if row["NaN"] else html("<tr>{}</tr>", cells))
    more = (html("<p class='wb-note'>{} more rows not shown.</p>", len(records) - max_rows)
            if len(records) > max_rows else "")
    return html("<table class='wb'><tr>{}</tr>{}</table>{}", head, join("", body), more)


def _indent(s: str) -> Markup:
    """Escaped text whose runs of two spaces stay visible (the depth indent of the module column)."""
    return join("&nbsp;&nbsp;", s.split("  "))


def detail_html(r: ModuleRecord) -> Markup:
    """Shapes, sizes and stats of one call as a small HTML block."""
    def metas(ms: Sequence[TensorMeta]) -> Markup:
        return join("<br>", (html("<code>{}</code> {} · {}", _indent(m.path), m.short(), format_bytes(m.nbytes))
                             for m in ms)) or html("-")

    lines = [html("<b>{}</b> <span style='color:#888'>{} · call {} · depth {}</span>",
                  _indent(r.display_name), r.type, r.call, r.depth),
             html("<b>inputs</b><br>{}", metas(r.inputs)), html("<b>outputs</b><br>{}", metas(r.outputs)),
             html("<b>params</b> {} ({}) · <b>time</b> {} (self {})", format_count(r.params),
                  format_bytes(r.param_bytes), format_ms(r.time_ms), format_ms(r.self_time_ms)),
             html("<b>saved for backward</b> {} · <b>output</b> {}", format_bytes(r.saved_bytes),
                  format_bytes(r.output_bytes))]
    for label, st in (("input", r.in_stats), ("output", r.out_stats)):
        if st is not None:
            flag = html(" <span style='color:#C44E52'><b>non-finite</b></span>") if st.nonfinite else ""
            lines.append(html("<b>{} stats</b> mean {:.4g} · std {:.4g} · min {:.4g} · max {:.4g} · NaN {} · Inf {}{}",
                              label, st.mean, st.std, st.min, st.max, st.nan, st.inf, flag))
    return html("<div style='line-height:1.5;font-size:12px'>{}</div>", join("<br>", lines))


def activation_histogram(r: ModuleRecord | None, *, bins: int = 60, height: int = 260,
                         width: int | None = None) -> go.Figure:
    """Histogram of the evenly strided output samples of one call (trace with samples=N)."""
    if r is None:
        return message_figure("Select a module to see its activations.", title="Activations", height=height,
                              width=width)
    if not r.samples:
        return message_figure("No activation samples for this call. Trace with "
                              "`workbench.trace(model, samples=512)` to keep values for histograms.",
                              title=f"Activations of {r.display_name}", height=height, width=width)
    x = np.asarray(r.samples, dtype=np.float64)
    finite = x[np.isfinite(x)]
    fig = go.Figure(go.Histogram(x=finite, nbinsx=bins, marker_color=COLORS["params"],
                                 hovertemplate="value %{x}<br>count %{y}<extra></extra>"))
    fig.update_xaxes(title="output value")
    fig.update_yaxes(title="count")
    bad = x.size - finite.size
    title = f"Output values of {r.display_name} ({x.size} samples" + (f", {bad} non-finite)" if bad else ")")
    return base_layout(fig, title, height=height, width=width, bargap=0.02)


def time_bars(records: Sequence[ModuleRecord], *, top: int = 20, height: int = 380) -> go.Figure:
    """The `top` slowest calls by self time (ms), for reports."""
    timed = sorted([r for r in records if r.self_time_ms is not None], key=lambda r: -(r.self_time_ms or 0.0))[:top]
    if not timed:
        return message_figure("No timings: trace with timing=True (the default).", title="Slowest modules")
    fig = go.Figure(go.Bar(y=[r.display_name for r in timed][::-1], x=[r.self_time_ms for r in timed][::-1],
                           orientation="h", marker_color=COLORS["params"],
                           hovertemplate="%{y}<br>self time %{x:.3f} ms<extra></extra>"))
    fig.update_xaxes(title="self time (ms)")
    return base_layout(fig, f"Slowest {len(timed)} calls (self time)", height=height)
