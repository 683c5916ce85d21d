"""Shared look for every figure: one template, one palette, humanised units, and the missing-data figure."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence

import plotly.graph_objects as go
import plotly.io as pio

from ..capture.report import format_bytes, format_count

__all__ = ["COLORS", "FONT", "FULL_WIDTH", "HALF_WIDTH", "base_layout", "format_bytes", "format_count", "format_ms",
           "int_dtick", "legend_on_top", "message_figure", "token_labels"]

FONT = "Inter, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif"
COLORS = {
    "params": "#4C72B0", "grads": "#DD8452", "saved": "#55A868", "optimizer": "#8172B3", "kv": "#C44E52",
    "accent": "#C44E52", "muted": "#8C8C8C", "ok": "#55A868", "warn": "#E1A23A", "bad": "#C44E52",
    "band_low": "rgba(76,114,176,0.12)", "band_high": "rgba(196,78,82,0.12)", "grid": "#ECECEC",
}
ATTN_SCALE = "Blues"  # attention weights in [0, 1]
GRAD_SCALE = "Viridis"  # log10 gradient norms
# Widths (px) that fit a default JupyterLab notebook column (about 970 px of output at a 1400 px window, about
# 930 px inside a dashboard tab): one full-width figure, or two half-width ones side by side.
FULL_WIDTH = 900
HALF_WIDTH = 448
TITLE_BAND = 44  # top margin of a titled figure; a top legend adds LEGEND_BAND below the title
LEGEND_BAND = 28


def _template() -> go.layout.Template:
    """plotly_white's layout, with its trace defaults for the trace types the figures draw. The whole template
    also carries the defaults of 20 trace types no figure draws: applying it cost 16.7 ms a figure against 6.8
    ms for this one (measured here), and it travels with every figure sent to a notebook or written to HTML."""
    white = pio.templates["plotly_white"]
    used = {k: v for k, v in white.data.to_plotly_json().items() if k in ("scatter", "heatmap", "bar", "histogram")}
    return go.layout.Template(layout=white.layout, data=used)


TEMPLATE = _template()


def base_layout(fig: go.Figure, title: str | None = None, *, height: int = 360, width: int | None = None,
                **extra: object) -> go.Figure:
    """Apply the workbench template (white background, light grid, compact margins) and return `fig`.

    The title is pinned to the top edge (container coordinates) so a legend placed above the plot
    (`legend_on_top`) sits in a band of its own below it and never overlaps it."""
    fig.update_layout(
        template=TEMPLATE, font=dict(family=FONT, size=12, color="#222"),
        title=dict(text=title, x=0.01, xanchor="left", y=1, yref="container", yanchor="top", pad=dict(t=12),
                   font=dict(size=15)) if title else None,
        height=height, width=width, margin=dict(l=60, r=20, t=TITLE_BAND if title else 16, b=48),
        hoverlabel=dict(font=dict(family=FONT, size=12)), **extra,
    )
    return fig


def message_figure(text: str, *, title: str | None = None, height: int = 220, width: int | None = None) -> go.Figure:
    """A figure holding only a centred explanation (used when the records lack what a view shows).

    The text is wrapped to the figure's width (plotly annotations never wrap by themselves)."""
    fig = go.Figure()
    chars = max(30, int((width or FULL_WIDTH) - 60) // 7)  # ~7 px per character at 13 px
    fig.add_annotation(text="<br>".join(textwrap.wrap(text, chars, break_on_hyphens=False)) or text,
                       x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                       font=dict(size=13, color=COLORS["muted"]), align="center")
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return base_layout(fig, title, height=height, width=width)


def legend_on_top(fig: go.Figure) -> go.Figure:
    """A one-row horizontal legend between the title and the plot (for figures with a few short entries)."""
    fig.update_layout(legend=dict(orientation="h", x=0, xanchor="left", y=1.0, yanchor="bottom", yref="paper",
                                  font=dict(size=11)),
                      margin=dict(t=TITLE_BAND + LEGEND_BAND))
    return fig


def int_dtick(n: int, pixels: float, min_px: float = 14.0) -> int:
    """Smallest step from 1, 2, 5, 10, 20, 50, ... that keeps integer ticks of an axis of `n` items at
    least `min_px` apart over `pixels` (layer and step axes must never show half-integers)."""
    per = pixels / max(n, 1)
    step = 1
    while step * per < min_px:
        step = step * 5 // 2 if str(step)[0] == "2" else step * 2
    return step


def format_ms(ms: float | None) -> str:
    """Milliseconds with sensible precision ("0.041 ms", "12.3 ms", "1.52 s")."""
    if ms is None or (isinstance(ms, float) and math.isnan(ms)):
        return "-"
    if ms >= 1000:
        return f"{ms / 1000:.2f} s"
    if ms < 0.1:
        return f"{ms * 1000:.3g} µs"
    return f"{ms:.1f} ms" if ms >= 10 else f"{ms:.3g} ms"


def token_labels(tokens: Sequence[str] | None, positions: Sequence[int], width: int = 1) -> list[str]:
    """Unique axis labels "pos token" (or "pos-pos" for windows of `width` positions).

    Positions keep repeated tokens apart: a categorical axis would otherwise merge two "the" rows.
    """
    out = []
    for p in positions:
        if width > 1:
            out.append(f"{p}–{p + width - 1}")
        elif tokens is not None and 0 <= p < len(tokens):
            out.append(f"{p} {_clean(tokens[p])}")
        else:
            out.append(str(p))
    return out


def _clean(tok: str) -> str:
    """Make whitespace visible and keep labels short (Ġ/▁ markers become a visible space)."""
    t = tok.replace("Ġ", "·").replace("▁", "·").replace(" ", "·").replace("\n", "⏎").replace("Ċ", "⏎")
    return t if len(t) <= 14 else t[:13] + "…"


def log_ticks(lo: float, hi: float) -> tuple[list[float], list[str]]:
    """Tick positions and labels "1e-3" for a log10 colour bar spanning [lo, hi] (log10 values)."""
    a, b = math.floor(lo), math.ceil(hi)
    step = max(1, (b - a) // 8)
    vals = list(range(a, b + 1, step))
    return [float(v) for v in vals], [f"1e{v}" for v in vals]
