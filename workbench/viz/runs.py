"""A training run's records as figures: the loss curve with the trigger markers, layers × steps heatmaps of
gradient norm, update ratio and activation RMS, attention entropy per layer and head, a replayed step's
findings, and the offline page of all of them.

Each figure keeps the same traces whether the run holds 0 steps or 100k (the loss curve is always a line and a
marker trace; a heatmap is always one heatmap), so a live widget updates them in place. Module names, trigger
details and the doctor's text come from a file: every string plotly renders is HTML-escaped here, and the page
goes through `write_html`, which escapes whatever is not `safehtml` Markup.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from ..runs import ReplayRecord, RunFile
from ..safehtml import Markup, html, join, plotly_div, text
from .export import write_html
from .style import COLORS, FULL_WIDTH, base_layout

HEATMAPS = {  # vector metric -> (title, colour bar, log10 scale)
    "grad_norm/module": ("Gradient norm per module", "log10 |g|", True),
    "update_ratio/module": ("Update ratio per module", "log10 |Δw|/|w|", True),
    "act_rms/block": ("Activation RMS per block", "RMS", False),
}
MAX_COLUMNS = 400  # steps drawn in a heatmap at most (evenly thinned; events are in the loss curve)


def _esc(value: Any) -> str:
    """A string for a plotly label or hover: HTML-escaped, so a module name's `<b>` shows as written."""
    return str(text(value))


def loss_curve(run: RunFile, *, height: int = 320, width: int | None = None) -> go.Figure:
    """The loss per step (line) and one marker per step a trigger fired on (red; filled when that step was
    replayed), its kinds and details on hover. The marker trace's customdata is the step (for a click)."""
    steps, loss = run.scalar("loss") if "loss" in run.metrics() else ([], [])
    by_step: dict[int, list[str]] = {}
    for e in run.events():
        by_step.setdefault(e.step, []).append(_esc(f"{e.kind}: {e.detail}"))
    replayed = {r.step for r in run.replays()}
    at = dict(zip(steps, loss, strict=True))
    marks = sorted(by_step)
    y = [at.get(s, math.nan) for s in marks]
    finite = [v for v in loss if math.isfinite(v)]
    top = max(finite) if finite else 1.0
    y = [v if math.isfinite(v) else top for v in y]  # a non-finite loss is marked at the top of the curve
    texts = ["<br>".join(by_step[s]) + ("<br>(replayed: click)" if s in replayed else "") for s in marks]
    fig = _loss_figure(steps, loss, marks, y, ["circle" if s in replayed else "circle-open" for s in marks], texts)
    base_layout(fig, f"Loss · {len(steps)} steps · {len(marks)} trigger steps", height=height,
                width=width or FULL_WIDTH)
    return fig


def _loss_figure(steps: list[int], loss: list[float], marks: list[int], y: list[float], symbols: list[str],
                 texts: list[str]) -> go.Figure:
    """The line and the marker trace, built alike for an empty run (a live view updates them in place, and
    plotly.js restyles only the attributes the first draw had)."""
    fig = go.Figure([
        go.Scatter(x=steps, y=_gaps(loss), mode="lines", name="loss", line=dict(color=COLORS["params"]),
                   hovertemplate="step %{x}<br>loss %{y:.4g}<extra></extra>"),
        go.Scatter(x=marks, y=y, mode="markers", name="trigger", customdata=marks, text=texts,
                   marker=dict(size=12, color=COLORS["bad"], symbol=symbols, line=dict(width=2)),
                   hovertemplate="step %{x}<br>%{text}<extra></extra>"),
    ])
    fig.update_xaxes(title="step")
    fig.update_yaxes(title="loss")
    return fig


def metric_heatmap(run: RunFile, name: str, *, height: int | None = None, width: int | None = None) -> go.Figure:
    """Layers or modules (rows, in model order) × steps (columns) of the vector metric `name` (one of
    HEATMAPS); at most MAX_COLUMNS steps, evenly thinned."""
    title, bar, log = HEATMAPS[name]
    steps, keys, rows = run.vector(name) if name in run.metrics() else ([], [], [])
    if len(steps) > MAX_COLUMNS:
        pick = [round(i * (len(steps) - 1) / (MAX_COLUMNS - 1)) for i in range(MAX_COLUMNS)]
        steps, rows = [steps[i] for i in pick], [rows[i] for i in pick]
    z = [_gaps([_scale(rows[j][i], log) for j in range(len(steps))]) for i in range(len(keys))]  # (M, S)
    labels = [_esc(k or "(root)") for k in keys]
    fig = go.Figure(go.Heatmap(z=z, x=steps, y=labels, colorscale="Viridis", colorbar=dict(title=bar),
                               hovertemplate="%{y}<br>step %{x}<br>%{z:.3g}<extra></extra>"))
    fig.update_xaxes(title="step")
    fig.update_yaxes(autorange="reversed", tickfont=dict(size=10))
    base_layout(fig, title, height=height or min(700, max(240, 16 * len(keys) + 110)), width=width or FULL_WIDTH)
    return fig


def attention_entropy(run: RunFile, *, height: int = 300, width: int | None = None) -> go.Figure:
    """Attention entropy (nats) per layer (rows) and head (columns) at the newest attention step."""
    steps, keys, rows = (run.vector("attn_entropy/head") if "attn_entropy/head" in run.metrics()
                         else ([], [], []))
    blocks = list(dict.fromkeys(k.rsplit(".h", 1)[0] for k in keys))
    heads = len(keys) // max(1, len(blocks))
    last = rows[-1] if rows else []
    z = [_gaps([last[b * heads + h] for h in range(heads)]) for b in range(len(blocks))] if last else []
    fig = go.Figure(go.Heatmap(z=z, x=list(range(heads)), y=[_esc(b) for b in blocks], colorscale="Magma",
                               colorbar=dict(title="nats"),
                               hovertemplate="%{y} head %{x}<br>entropy %{z:.3f} nats<extra></extra>"))
    fig.update_xaxes(title="head", dtick=1)
    fig.update_yaxes(autorange="reversed")
    step = f" · step {steps[-1]}" if steps else " · no attention step yet"
    base_layout(fig, f"Attention entropy per layer and head{step}", height=height, width=width or FULL_WIDTH)
    return fig


def findings_html(replay: ReplayRecord) -> Markup:
    """A replayed step: the first module gone wrong and the doctor's findings, one row each."""
    first = (html("first module out of range, in execution order: <code>{}</code>", replay.first_module)
             if replay.first_module else html("every module's output stayed finite and in range"))
    rows = join("", (html("<tr><td><b>{}</b></td><td>{}</td><td style='text-align:left'>{}</td></tr>",
                          f.get("check", "?"), str(f.get("status", "?")).upper(), f.get("summary", ""))
                     for f in replay.findings))
    table = html("<table><thead><tr><th>check</th><th>status</th><th>finding</th></tr></thead>"
                 "<tbody>{}</tbody></table>", rows) if replay.findings else html("<i>no doctor checks ran</i>")
    return html("<div class='wb-run-replay'><p><b>Step {}</b> replayed: {}</p>{}</div>", replay.step, first, table)


def summary(run: RunFile) -> str:
    """One line: steps, last step, events, replays."""
    n = len(run.steps())
    return (f"{run.path.name}: {n} steps (last {run.last_step}), {len(run.events())} trigger events, "
            f"{len(run.replays())} replayed steps")


def figures(run: RunFile) -> list[go.Figure]:
    """Every figure of the run, in page order."""
    return [loss_curve(run), *(metric_heatmap(run, name) for name in HEATMAPS), attention_entropy(run)]


def run_html(run: RunFile, *, include_plotlyjs: bool = True) -> Markup:
    """The notebook view of a run file: the summary line, the loss curve and the heatmaps."""
    parts = [html("<p><b>{}</b></p>", summary(run))]
    for i, fig in enumerate(figures(run)):
        parts.append(plotly_div(fig, include_plotlyjs=include_plotlyjs and i == 0))
    return join("\n", parts)


def save_run(run: RunFile, path: str | Path) -> Path:
    """The offline page: summary, figures and every replayed step's findings."""
    parts: list[Any] = [html("<p><b>{}</b></p>", summary(run)), *figures(run)]
    parts.extend(findings_html(r) for r in run.replays())
    return write_html(path, f"Training run {run.path.name}", parts)


def _gaps(values: list[float]) -> list[float | None]:
    """Non-finite values as None: plotly draws a gap, and the widget's JSON stays valid (NaN is not JSON)."""
    return [v if math.isfinite(v) else None for v in values]


def _scale(v: float, log: bool) -> float:
    if not log:
        return v
    return math.log10(v) if v > 0 and math.isfinite(v) else math.nan


def loss_curve_empty() -> go.Figure:
    """The loss curve's two traces with no data (a view's figure before the file holds a run)."""
    fig = _loss_figure([], [], [], [], [], [])
    return base_layout(fig, "Loss · waiting for the run", height=320, width=FULL_WIDTH)


def empty_heatmap(name: str) -> go.Figure:
    """A heatmap of no steps yet, titled as `metric_heatmap(run, name)` is."""
    fig = go.Figure(go.Heatmap(z=[], x=[], y=[], colorscale="Viridis", colorbar=dict(title=HEATMAPS[name][1])))
    return base_layout(fig, HEATMAPS[name][0], height=240, width=FULL_WIDTH)


def empty_entropy() -> go.Figure:
    fig = go.Figure(go.Heatmap(z=[], x=[], y=[], colorscale="Magma", colorbar=dict(title="nats")))
    return base_layout(fig, "Attention entropy per layer and head · no attention step yet", height=240,
                       width=FULL_WIDTH)
