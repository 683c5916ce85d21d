"""Gradient-flow figures from a `GradientHistory`: per-module norms on a log scale with vanishing and
exploding bands, and a module x step heatmap of log10 norms."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import plotly.graph_objects as go

from ..capture.gradients import GradientHistory
from ..errors import InputError
from .style import COLORS, GRAD_SCALE, base_layout, int_dtick, log_ticks, message_figure

if TYPE_CHECKING:
    from ..capture.trace import Trace

NO_GRADIENTS = ("No gradients recorded. Trace a backward pass with "
                "`with workbench.trace(model, gradients=True) as tr: loss.backward()`, or call "
                "`history.append(model)` after each `loss.backward()` in a training loop.")
MAX_STEPS_SHOWN = 400  # heatmap columns sent to the browser (older steps are strided)


def as_history(source: GradientHistory | Trace) -> GradientHistory:
    """A GradientHistory from a history (returned as is) or a Trace taken with gradients=True."""
    if isinstance(source, GradientHistory):
        return source
    if not isinstance(getattr(source, "gradients", None), list):
        raise InputError(f"expected a GradientHistory or a Trace (taken with gradients=True), got "
                         f"{type(source).__name__}.")
    hist = GradientHistory()
    if getattr(source, "gradients", None):
        hist.append(source)
    return hist


def grad_norm_bars(history: GradientHistory, step: int = -1, *, height: int = 380) -> go.Figure:
    """Per-module gradient L2 norm at one step (log y), bands below `vanishing` and above `exploding`.

    Trace 0 holds the finite norms; non-finite ones are drawn at the top in red (trace 1)."""
    if not history.norms:
        return message_figure(NO_GRADIENTS, title="Gradient flow")
    data = bars_data(history, step)
    fig = go.Figure([
        go.Bar(x=data["x"], y=data["y"], marker_color=data["colors"], name="grad norm",
               hovertemplate="%{x}<br>‖grad‖ = %{y:.3e}<extra></extra>"),
        go.Scatter(x=data["bad_x"], y=[data["top"]] * len(data["bad_x"]), mode="markers+text", text="NaN/Inf",
                   textposition="top center", marker=dict(color=COLORS["bad"], size=10, symbol="triangle-up"),
                   hovertemplate="%{x}: non-finite gradient<extra></extra>", showlegend=False),
    ])
    yrange = [math.log10(data["bottom"]), math.log10(data["top"]) + 0.3]
    fig.update_yaxes(type="log", title="‖grad‖₂ (log)", range=yrange, exponentformat="power")
    fig.update_xaxes(tickangle=-60, tickfont=dict(size=9), type="category")
    fig.update_layout(shapes=bands(history, data), bargap=0.15)
    n_flag = len(history.flags(step))
    title = f"Gradient norms · step {history.steps[step]}" + (f" · {n_flag} flagged" if n_flag else "")
    return base_layout(fig, title, height=height, showlegend=False)


def bars_data(history: GradientHistory, step: int = -1) -> dict:
    """x (modules with a gradient), y (norms), colours by flag, and the y range incl. both bands."""
    row = history.norms[step]
    pairs = [(m, v) for m, v in zip(history.modules, row) if not math.isnan(v)]
    finite = [(m, v) for m, v in pairs if math.isfinite(v) and v > 0]
    vals = [v for _, v in finite] or [1.0]
    bottom = min(min(vals), history.vanishing) / 10
    top = max(max(vals), history.exploding) * 10
    colors = [COLORS["bad"] if v > history.exploding else COLORS["params"] if v >= history.vanishing
              else COLORS["warn"] for _, v in finite]
    return dict(x=[m for m, _ in finite], y=[v for _, v in finite], colors=colors, bottom=bottom, top=top,
                bad_x=[m for m, v in pairs if not math.isfinite(v)])


def bands(history: GradientHistory, data: dict) -> list[dict]:
    common = dict(type="rect", xref="paper", x0=0, x1=1, yref="y", layer="below", line=dict(width=0))
    return [
        dict(common, y0=data["bottom"], y1=history.vanishing, fillcolor=COLORS["band_low"]),
        dict(common, y0=history.exploding, y1=data["top"] * 2, fillcolor=COLORS["band_high"]),
    ]


def heatmap_data(history: GradientHistory, max_steps: int = MAX_STEPS_SHOWN) -> dict:
    """log10 norms as (modules, steps') with steps strided to at most max_steps columns (latest kept)."""
    n = len(history.steps)
    stride = max(1, math.ceil(n / max_steps))
    cols = list(range(n - 1, -1, -stride))[::-1]
    z = np.array([history.norms[i] + [np.nan] * (len(history.modules) - len(history.norms[i])) for i in cols],
                 dtype=np.float64).T  # (modules, steps')
    with np.errstate(divide="ignore", invalid="ignore"):
        logz = np.where(np.isfinite(z) & (z > 0), np.log10(np.where(z > 0, z, 1)), np.nan)
    logz = np.where(np.isposinf(z), np.nanmax(logz) + 1 if np.isfinite(logz).any() else 3, logz)
    return dict(z=logz, x=[history.steps[i] for i in cols], y=list(history.modules), stride=stride)


def grad_heatmap(history: GradientHistory, *, max_steps: int = MAX_STEPS_SHOWN, height: int | None = None) -> go.Figure:
    """Module x training-step heatmap of log10 gradient norms (blank = no gradient reached it)."""
    if not history.norms:
        return message_figure(NO_GRADIENTS, title="Gradient norms over steps")
    d = heatmap_data(history, max_steps)
    finite = d["z"][np.isfinite(d["z"])]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (-3.0, 0.0)
    vals, text = log_ticks(lo, hi)
    fig = go.Figure(go.Heatmap(
        z=d["z"], x=d["x"], y=d["y"], colorscale=GRAD_SCALE, zmin=lo, zmax=max(hi, lo + 1e-6),
        colorbar=dict(title=dict(text="‖grad‖", side="right"), tickvals=vals, ticktext=text, thickness=12),
        hovertemplate="%{y}<br>step %{x}<br>log10 ‖grad‖ = %{z:.2f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", tickfont=dict(size=9), type="category")
    span = (d["x"][-1] - d["x"][0] + 1) if d["x"] else 1
    fig.update_xaxes(title="step" + (f" (every {d['stride']}th)" if d["stride"] > 1 else ""), tick0=0,
                     dtick=int_dtick(span, 600, 40))  # steps are integers: never a "0.5" tick
    return base_layout(fig, "Gradient norms over steps (log scale)",
                       height=height or min(900, max(280, 12 * len(d["y"]) + 110)))


def grad_flow_mpl(history: GradientHistory, step: int = -1):
    """Static matplotlib bar chart of per-module gradient norms with the two bands (PNG export)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 0.18 * len(history.modules) + 2), 4), dpi=110)
    if not history.norms:
        ax.text(0.5, 0.5, "no gradients recorded", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    d = bars_data(history, step)
    ax.bar(range(len(d["x"])), d["y"], color=d["colors"])
    ax.set_yscale("log")
    ax.axhspan(d["bottom"], history.vanishing, color=COLORS["params"], alpha=0.12, label="vanishing")
    ax.axhspan(history.exploding, d["top"], color=COLORS["bad"], alpha=0.12, label="exploding")
    ax.set_ylim(d["bottom"], d["top"])
    ax.set_xticks(range(len(d["x"])), d["x"], rotation=80, fontsize=6)
    ax.set_ylabel("grad L2 norm")
    ax.set_title(f"Gradient norms, step {history.steps[step]}", loc="left", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
