"""`report_html(trace, path)`: one standalone, offline HTML page summarising a trace."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..safehtml import Markup, html, join
from .attention import attention_heatmap, heads_grid, layer_records, metric_matrix
from .export import write_html
from .gradients import as_history, grad_norm_bars
from .memory import cuda_peak_note, memory_bars, memory_breakdown
from .modules import html_table, time_bars
from .style import format_bytes, format_count, format_ms

if TYPE_CHECKING:
    from ..capture.trace import Trace

REPORT_MAX_CELLS = 128  # side of each attention map in the report (the page stays a few MB)


def report_html(trace: Trace, path: str | Path, *, tokens: Sequence[str] | None = None,
                max_layers: int = 4) -> Path:
    """Write a standalone HTML report of `trace`: summary, module table, memory, gradients and attention.

    plotly.js is inlined once, so the page works offline. Attention shows the head-metric matrix
    for every layer and, for the first `max_layers` layers, all heads plus head 0 (windowed to
    128 x 128). `tokens` labels the attention axes (one string per position).
    """
    meta = trace.meta or {}
    parts: list[Any] = [_summary(trace, meta), html("<h2>Modules</h2>"), html_table(trace.records)]
    parts.append(time_bars(trace.records))
    parts += [html("<h2>Memory</h2>"), memory_bars(memory_breakdown(trace), note=cuda_peak_note(trace))]
    parts.append(html("<h2>Gradients</h2>"))
    parts.append(grad_norm_bars(as_history(trace)))
    parts.append(html("<h2>Attention</h2>"))
    parts.append(metric_matrix(trace.attention, "entropy"))
    if trace.attention:
        parts.append(metric_matrix(trace.attention, "future_max"))
        for rec in list(layer_records(trace.attention).values())[:max_layers]:
            parts.append(heads_grid(rec, tokens))
            if rec.map is not None:
                parts.append(attention_heatmap(rec, rec.heads[0], tokens, max_cells=REPORT_MAX_CELLS))
    return write_html(path, f"workbench trace report · {meta.get('model', 'model')}", parts)


def _summary(trace: Trace, meta: dict) -> Markup:
    bad = trace.first_nonfinite() if trace.records else None
    items = [
        ("model", meta.get("model", "?")), ("device", meta.get("device", "?")), ("dtype", meta.get("dtype", "?")),
        ("parameters", format_count(meta.get("total_params", 0))),
        ("parameter bytes", format_bytes(meta.get("param_bytes"))),
        ("module calls", str(len(trace.records))), ("wall time", format_ms(meta.get("wall_ms"))),
        ("saved for backward", format_bytes(meta.get("saved_bytes"))),
        ("attention maps", f"{len(trace.attention)} ({format_bytes(meta.get('attention_bytes', 0))})"),
        ("first non-finite", bad.display_name if bad else "none (all finite)"),
    ]
    rows = join("", (html("<tr><td>{}</td><td>{}</td></tr>", k, v) for k, v in items))
    return html("<table class='wb'>{}</table>", rows)
