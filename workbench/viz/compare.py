"""Figures and HTML for a `workbench.compare.Comparison`: pure functions of the result, no models touched.

- `divergence_figure`: the error at each aligned point along depth, a line per input case, the noise band
  shaded below the tolerance and the first divergence marked;
- `weights_html`: the weight-match table (matched exactly, under a transformation, unmatched);
- `diagnosis_html`: the fixes tried at the first divergence and what each left of the gap;
- `comparison_html` / `save_comparison`: all of it as one block or one offline page.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import plotly.graph_objects as go

from ..safehtml import Markup, html, join, plotly_div
from .export import write_html
from .style import COLORS, base_layout, legend_on_top

if TYPE_CHECKING:
    from ..compare import Comparison, WeightTable
    from ..compare.diagnose import Diagnosis

CASE_COLORS = {"batch": "#4C72B0", "padded": "#DD8452", "cached": "#55A868"}
FLOOR = 1e-12  # exact zeros are drawn here on the log axis


def _shown(x: float) -> float | None:
    return None if math.isnan(x) or math.isinf(x) else max(x, FLOOR)


def divergence_figure(comparison: Comparison, *, height: int = 380) -> go.Figure:
    """Relative error (log) at each aligned point, a line per case; the noise band is everything below tolerance."""
    fig = go.Figure()
    labels = [e.label for e in comparison.errors_for(comparison.cases[0])] if comparison.cases else []
    tol = comparison.tolerance
    fig.add_trace(go.Scatter(x=labels, y=[tol] * len(labels), mode="lines", line=dict(width=0), showlegend=False,
                             hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=labels, y=[FLOOR] * len(labels), mode="lines", line=dict(width=0), fill="tonexty",
                             fillcolor=COLORS["band_low"], name=f"noise (< {tol:.0e})", hoverinfo="skip"))
    for case in comparison.cases:
        errs = comparison.errors_for(case)
        fig.add_trace(go.Scatter(
            x=[e.label for e in errs], y=[_shown(e.error) for e in errs], mode="lines+markers", name=case,
            line=dict(color=CASE_COLORS.get(case, COLORS["muted"])),
            customdata=[[f"{e.error:.2e}", "yes" if e.inputs_agree else "no"] for e in errs],
            hovertemplate="%{x}<br>error %{customdata[0]}<br>inputs agree: %{customdata[1]}<extra>" + case
                          + "</extra>"))
    first = comparison.first_divergence
    if first is not None:
        fig.add_trace(go.Scatter(x=[first.label], y=[_shown(first.error)], mode="markers", name="first divergence",
                                 marker=dict(symbol="x", size=14, color=COLORS["bad"])))
    base_layout(fig, f"Divergence along depth: {comparison.candidate_name} vs {comparison.reference_name}",
                height=height)
    fig.update_yaxes(type="log", title="max |cand - ref| / max |ref|", exponentformat="power")
    fig.update_xaxes(tickangle=-45, tickfont=dict(size=10))
    legend_on_top(fig)
    return fig


def weights_html(table: WeightTable) -> Markup:
    """The weight-match table: transformed and unmatched tensors first, then the exact ones."""
    rows = [html("<tr><td>{}</td><td>{}</td><td style='color:{}'>{}</td><td style='text-align:left'>{}</td></tr>",
                 m.candidate, m.reference, COLORS["bad"] if m.relation != "exact" else COLORS["ok"], m.relation,
                 m.detail)
            for m in sorted(table.matches, key=lambda m: m.relation == "exact")]
    rows += [html("<tr><td>{}</td><td></td><td style='color:{}'>unmatched</td><td></td></tr>", n, COLORS["bad"])
             for n in table.unmatched_candidate]
    rows += [html("<tr><td></td><td>{}</td><td style='color:{}'>unmatched</td><td></td></tr>", n, COLORS["bad"])
             for n in table.unmatched_reference]
    ties = join("", (html("<p class='wb-note'>{}</p>", t) for t in table.ties))
    return html("<table class='wb'><tr><th>candidate</th><th>reference</th><th>relation</th><th>detail</th></tr>"
                "{}</table>{}", join("", rows), ties)


def diagnosis_html(diagnosis: Diagnosis | None) -> Markup:
    """The cause at the first divergence, with every fix tried and the error it left."""
    if diagnosis is None:
        return html("<p>{}</p>", "No divergence: nothing to diagnose.")
    d = diagnosis
    head = (html("<p><b>Cause at {}</b>: {}</p>", d.point, d.cause.cause) if d.cause is not None
            else html("<p><b>No cause found at {}</b>: {}</p>", d.point, d.note))
    rows = [html("<tr><td>{}</td><td style='color:{}'>{}</td></tr>", t.name,
                 COLORS["ok"] if t.error <= d.tolerance else COLORS["muted"], _num(t.error, d.tolerance))
            for t in d.trials]
    return html("{}<p class='wb-note'>{} inputs; replayed on the reference's input the module is off by {} "
                "(noise {:.0e})</p><table class='wb'><tr><th>fix tried</th><th>error left</th></tr>{}</table>",
                head, d.case, _num(d.replay_error, d.tolerance), d.tolerance, join("", rows))


def _num(x: float, tol: float) -> str:
    if math.isnan(x):
        return "not applicable"
    return "shapes differ or not finite" if math.isinf(x) else f"< {tol:.0e}" if x <= tol else f"{x:.1e}"


def comparison_html(comparison: Comparison, *, include_plotlyjs: bool = True) -> Markup:
    """The whole report as one HTML block (for a notebook's rich display)."""
    return join("\n", [
        html("<h3>{}</h3>", comparison.verdict()),
        plotly_div(divergence_figure(comparison), include_plotlyjs=include_plotlyjs),
        html("<h4>{}</h4>", "Diagnosis"), diagnosis_html(comparison.diagnosis),
        html("<h4>{}</h4>", "Weights"), weights_html(comparison.weights),
    ])


def save_comparison(comparison: Comparison, path: str | Path) -> Path:
    """One offline HTML page (plotly.js inline)."""
    title = f"compare: {comparison.candidate_name} vs {comparison.reference_name}"
    return write_html(path, title, [
        html("<p><b>{}</b></p><pre>{}</pre>", comparison.verdict(), comparison.summary()),
        divergence_figure(comparison),
        html("<h2>{}</h2>", "Diagnosis at the first divergence"), diagnosis_html(comparison.diagnosis),
        html("<h2>{}</h2>", "Weights"), weights_html(comparison.weights),
    ])
