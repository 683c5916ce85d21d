"""Figures and HTML for a `PatchingResult`: pure functions of the record.

- `patching_figure`: the layers x positions (or heads) heatmap of the normalised score, diverging around 0
  (the patch changes nothing) with 1 (the clean run restored) in full colour; the raw metric when the score
  is undefined (clean and corrupted metrics equal);
- `patching_html`: the figure under a one-line summary, for a notebook.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import plotly.graph_objects as go

from ..safehtml import Markup, html, join, plotly_div
from .style import FULL_WIDTH, base_layout

if TYPE_CHECKING:
    from ..interventions.record import PatchingResult

SCORE_SCALE = "RdBu"  # diverging: negative (the patch moves away from clean) red, positive blue
MEASURES = ("score", "metric")


def _cells(result: PatchingResult, measure: str) -> list[list[float | None]]:
    rows = result.scores if measure == "score" else result.values
    return [[None if math.isnan(v) else v for v in row] for row in rows]


def shown_measure(result: PatchingResult, measure: str = "score") -> str:
    """The measure drawn: the score unless it is undefined (then the metric)."""
    if measure == "score" and result.clean - result.corrupted == 0:
        return "metric"
    return measure


def patching_figure(result: PatchingResult, measure: str = "score", *, width: int = FULL_WIDTH) -> go.Figure:
    """Heatmap (layers top to bottom x columns) of the score ("score") or the metric ("metric") per cell."""
    measure = shown_measure(result, measure)
    z = _cells(result, measure)
    rows = [f"L{i}" for i in result.layers]
    custom = [[[name, f"{v:.4g}", f"{s:.3f}"] for v, s in zip(vals, scores)]
              for name, vals, scores in zip(result.layer_names, result.values, result.scores)]
    if measure == "score":
        colour = dict(colorscale=SCORE_SCALE, zmid=0, zmin=min(-1.0, *_finite(z)), zmax=max(1.0, *_finite(z)))
    else:
        colour = dict(colorscale="Viridis")
    fig = go.Figure(go.Heatmap(
        z=z, x=result.column_labels, y=rows, customdata=custom, colorbar=dict(title=measure, thickness=12),
        hovertemplate="%{customdata[0]}<br>" + result.column_kind + " %{x}<br>metric %{customdata[1]}"
                      "<br>score %{customdata[2]}<extra></extra>", **colour))
    kind = "heads" if result.site == "heads" else f"{result.site} x positions"
    title = (f"Activation patching ({kind}): {measure}; clean {result.clean:.4g}, corrupted {result.corrupted:.4g}")
    base_layout(fig, title, height=max(260, 90 + 22 * len(rows)), width=width)
    fig.update_yaxes(autorange="reversed", title="layer")
    fig.update_xaxes(title=result.column_kind, type="category", tickangle=-45 if result.site != "heads" else 0)
    return fig


def _finite(z: list[list[float | None]]) -> list[float]:
    return [v for row in z for v in row if v is not None] or [0.0]


def top_cells_table(result: PatchingResult, k: int = 5) -> Markup:
    """The k cells that move the metric most: patched module, position or head, metric, score."""
    index = {layer: i for i, layer in enumerate(result.layers)}
    columns = {col: j for j, col in enumerate(result.columns)}
    rows = [html("<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                 result.layer_names[index[layer]], result.column_labels[columns[col]],
                 f"{result.values[index[layer]][columns[col]]:.4g}", f"{score:.3f}")
            for layer, col, score in result.top(k)]
    return html("<table class='wb'><tr><th>patched module</th><th>{}</th><th>metric</th><th>score</th></tr>{}"
                "</table>", result.column_kind, join("", rows))


def patching_html(result: PatchingResult, *, include_plotlyjs: bool = True) -> Markup:
    """The summary line, any notes, the heatmap and the strongest cells, as one notebook block."""
    notes = join("", (html("<p class='wb-note'>{}</p>", n) for n in result.notes))
    return join("\n", [html("<p><b>{}</b></p>", result.summary()), notes,
                       plotly_div(patching_figure(result), include_plotlyjs=include_plotlyjs),
                       top_cells_table(result)])
