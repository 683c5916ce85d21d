"""Figures and HTML for a `workbench.compare.Comparison`: pure functions of the result, no models touched.

- `divergence_figure`: the error at each aligned point along depth, a line per input case, the noise band
  shaded below the tolerance and the first divergence marked;
- `weights_html`: the role table (each candidate tensor, its role, the reference tensor it equals, the relation;
  role findings highlighted) and `unmatched_html`, the parameters either side holds alone;
- `diagnosis_html`: the fixes tried at the first divergence and what each left of the gap;
- `patching_figure` / `patching_html`: the share of the logit gap each aligned point closes when the reference's
  activation is patched into the candidate there (`compare(..., patching=True)`), the first divergence marked;
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
    from ..compare.patching import PatchSweep

CASE_COLORS = {"batch": "#4C72B0", "padded": "#DD8452", "cached": "#55A868"}
FLOOR = 1e-12  # exact zeros are drawn here on the log axis
PATCHING = "Patching the reference into the candidate"


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
    """The role table: each candidate tensor, its role, the reference tensor it equals and that tensor's role, the
    relation; role findings (a tensor in the place of another role) first and highlighted, then transformed, then
    exact ones. Below it, the parameters with no counterpart, each side in its own list."""
    order = sorted(table.matches, key=lambda m: (not m.role_swapped, m.relation == "exact"))
    rows = [html("<tr class='{}'><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td style='color:{}'>{}</td>"
                 "<td style='text-align:left'>{}</td></tr>", "wb-role-finding" if m.role_swapped else "",
                 m.candidate, m.candidate_role.label, m.reference, m.reference_role.label,
                 COLORS["bad"] if m.role_swapped or m.relation != "exact" else COLORS["ok"],
                 f"{m.relation}, role differs" if m.role_swapped else m.relation, m.detail)
            for m in order]
    findings = table.role_findings()
    head = (html("<p class='wb-note' style='color:{}'>{}</p>", COLORS["bad"],
                 f"{len(findings)} tensor(s) hold the values of a reference tensor of another role: "
                 "the fix 'weights: swap back' puts each role's tensor back") if findings else html(""))
    ties = join("", (html("<p class='wb-note'>{}</p>", t) for t in table.ties))
    return html("{}<table class='wb'><tr><th>candidate</th><th>its role</th><th>reference</th><th>its role</th>"
                "<th>relation</th><th>detail</th></tr>{}</table>{}{}", head, join("", rows), ties,
                unmatched_html(table))


def unmatched_html(table: WeightTable) -> Markup:
    """The parameters with no counterpart: in the candidate only (each a suspect zeroed at the divergence), in the
    reference only (a bias added back, a position table added)."""
    def items(names: tuple[str, ...]) -> Markup:
        if not names:
            return html("<li>{}</li>", "none")
        return join("", (html("<li style='color:{}'>{}</li>", COLORS["bad"], n) for n in names))

    return html("<h5>{}</h5><ul class='wb-unmatched-candidate'>{}</ul><h5>{}</h5>"
                "<ul class='wb-unmatched-reference'>{}</ul>",
                f"Unmatched in the candidate ({len(table.unmatched_candidate)})", items(table.unmatched_candidate),
                f"Unmatched in the reference ({len(table.unmatched_reference)})", items(table.unmatched_reference))


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


def patching_figure(comparison: Comparison, *, height: int = 380) -> go.Figure:
    """A bar per aligned point: the share of the logit gap closed by patching the reference's activation there
    (1 closes it all, 0 changes nothing, below 0 widens it); bars that close at least 99% are green, the first
    divergence `compare` found is marked. Empty (with a title that says why) when there is nothing to show."""
    fig = go.Figure()
    sweep = comparison.patching
    points = sweep.points if sweep is not None else ()
    if sweep is not None and points:
        closed = [None if math.isnan(p.closed) else p.closed for p in points]
        fig.add_trace(go.Bar(
            x=[p.label for p in points], y=closed, name="share of the gap closed",
            marker=dict(color=[COLORS["ok"] if c is not None and c >= sweep.threshold else COLORS["muted"]
                               for c in closed]),
            customdata=[[p.module, _share(p.closed), _gap_left(p.gap, sweep.tolerance * sweep.scale), p.note or ""]
                        for p in points],
            hovertemplate="%{x} (%{customdata[0]})<br>closes %{customdata[1]}<br>gap left %{customdata[2]}"
                          "<br>%{customdata[3]}<extra></extra>"))
        first = comparison.first_divergence
        hit = next((p for p in points if first is not None and p.label == first.label), None)
        if hit is not None:
            fig.add_trace(go.Scatter(x=[hit.label], y=[0 if math.isnan(hit.closed) else hit.closed],
                                     mode="markers", name="first divergence",
                                     marker=dict(symbol="x", size=14, color=COLORS["bad"])))
    title = ("Patching the reference into the candidate: share of the logit gap closed" if points
             else "Patching: " + (sweep.summary() if sweep is not None else "not computed"))
    base_layout(fig, title, height=height)
    fig.update_yaxes(title="1 - gap patched / gap", zeroline=True)
    fig.update_xaxes(tickangle=-45, tickfont=dict(size=10))
    legend_on_top(fig)
    return fig


def patching_html(sweep: PatchSweep | None) -> Markup:
    """The patching sweep as a table: each aligned point, the candidate module patched, the gap left, the share
    closed; or a line that says why there is none."""
    if sweep is None:
        return html("<p>{}</p>", "Not computed: compare(reference, candidate, patching=True) patches each aligned "
                                 "point's reference activation into the candidate.")
    head = html("<p><b>{}</b></p><p class='wb-note'>gap: L2 norm of candidate - reference logits over the real "
                "tokens of the {} inputs; closed share: 1 - gap patched / gap</p>", sweep.summary(), sweep.case)
    if not sweep.points:
        return head
    rows = [html("<tr><td>{}</td><td>{}</td><td>{}</td><td style='color:{}'>{}</td><td>{}</td></tr>", p.label,
                 p.module, _gap_left(p.gap, sweep.tolerance * sweep.scale),
                 COLORS["ok"] if p.closed >= sweep.threshold else COLORS["muted"], _share(p.closed), p.note)
            for p in sweep.points]
    return html("{}<table class='wb'><tr><th>point</th><th>candidate module</th><th>gap left</th><th>closed</th>"
                "<th></th></tr>{}</table>", head, join("", rows))


def _share(x: float) -> str:
    """A share as a percentage to 0.1% (noise-sized shares of either sign read 0.0%)."""
    return "not patched" if math.isnan(x) else f"{round(x, 3) + 0.0:.1%}"


def _gap_left(gap: float, noise: float) -> str:
    """A gap as text: a bound when it is within noise (noise differs between CPUs), else two digits."""
    return "n/a" if math.isnan(gap) else f"< {noise:.0e}" if gap <= noise else f"{gap:.1e}"


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
        *_patching_parts(comparison, html("<h4>{}</h4>", PATCHING), include_plotlyjs=False),
    ])


def _patching_parts(comparison: Comparison, title: Markup, *, include_plotlyjs: bool | None = None) -> list:
    """The patching section, when the comparison holds a sweep: its figure as an object (for a page) or, given
    include_plotlyjs, as a div (for a block)."""
    if comparison.patching is None:
        return []
    fig = patching_figure(comparison)
    shown = fig if include_plotlyjs is None else plotly_div(fig, include_plotlyjs=include_plotlyjs)
    return [title, shown, patching_html(comparison.patching)]


def save_comparison(comparison: Comparison, path: str | Path) -> Path:
    """One offline HTML page (plotly.js inline)."""
    title = f"compare: {comparison.candidate_name} vs {comparison.reference_name}"
    return write_html(path, title, [
        html("<p><b>{}</b></p><pre>{}</pre>", comparison.verdict(), comparison.summary()),
        divergence_figure(comparison),
        html("<h2>{}</h2>", "Diagnosis at the first divergence"), diagnosis_html(comparison.diagnosis),
        html("<h2>{}</h2>", "Weights"), weights_html(comparison.weights),
        *_patching_parts(comparison, html("<h2>{}</h2>", PATCHING)),
    ])
