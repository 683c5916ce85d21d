"""Figures and HTML for stepwise generation (`StepRecord`s): text so far, top-k bars, cache per layer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import plotly.graph_objects as go

from ..safehtml import Markup, html, join
from .style import COLORS, HALF_WIDTH, base_layout, format_bytes, int_dtick, legend_on_top, message_figure

if TYPE_CHECKING:
    from ..generation.records import StepRecord


def text_html(token_texts: Sequence[str], prompt_length: int, *, probs: Sequence[float] = ()) -> Markup:
    """The sequence as HTML: prompt muted, generated tokens plain, the newest one highlighted.

    probs[i] is the probability of generated token i (shown on hover)."""
    parts = []
    n = len(token_texts)
    for i, t in enumerate(token_texts):
        shown = join("⏎<br>", str(t).split("\n"))
        if i < prompt_length:
            parts.append(html("<span style='color:#777'>{}</span>", shown))
            continue
        g = i - prompt_length
        tip = html(" title='step {}: p={:.3f}'", g, probs[g]) if g < len(probs) else ""
        style = ("background:#FFE08A;border-radius:3px;outline:1px solid #E1A23A;font-weight:600"
                 if i == n - 1 else "background:#EAF2FB;border-radius:3px")
        parts.append(html("<span style='{}'{}>{}</span>", style, tip, shown))
    return html("<div class='wb-text' style='font-family:ui-monospace,Menlo,monospace;font-size:13px;"
                "white-space:pre-wrap;line-height:1.7;padding:8px 10px;border:1px solid #e3e3e3;border-radius:6px;"
                "max-height:160px;overflow:auto'>{}</div>", join("", parts))


def topk_bars(step: StepRecord | None, *, height: int = 300, width: int | None = None) -> go.Figure:
    """Top-k next-token probabilities of one step; the chosen token in the accent colour.

    A sampled token outside the top k gets one extra bar at the bottom (its rank is unknown, so
    it is labelled "chosen")."""
    if step is None:
        return message_figure("Press Step to generate a token.", title="Next-token candidates", height=height,
                              width=width)
    labels = [f"{_short(t)} ({i})" for t, i in zip(step.candidate_texts, step.candidate_ids)]
    probs = list(step.candidate_probs)
    colors = [COLORS["accent"] if i == step.token_id else COLORS["params"] for i in step.candidate_ids]
    if step.token_id not in step.candidate_ids:
        labels.append(f"chosen: {_short(step.token_text)} ({step.token_id})")
        probs.append(step.token_prob)
        colors.append(COLORS["accent"])
    fig = go.Figure(go.Bar(x=probs[::-1], y=labels[::-1], orientation="h", marker_color=colors[::-1],
                           texttemplate="%{x:.3f}", textposition="outside", cliponaxis=False,
                           hovertemplate="%{y}<br>p = %{x:.4f}<extra></extra>"))
    top = max(probs)
    # room for the longest bar plus its "0.364" label; ticks stop at 1 (no probability lies beyond)
    fig.update_xaxes(title="probability", range=[0, top * 1.18 + 0.06],
                     tickvals=[v / 10 for v in range(0, 11, 1 if top < 0.45 else 2) if v / 10 <= top * 1.18 + 0.06])
    fig.update_yaxes(type="category", tickfont=dict(size=11), automargin=True)
    title = f"Step {step.step}: chose {_short(step.token_text)!r} · p={step.token_prob:.3f} · H={step.entropy:.2f} nats"
    return base_layout(fig, title, height=height, width=width)


def _short(text: str, n: int = 14) -> str:
    """A token as a visible, bounded label: escapes (\\n) instead of line breaks, "∅" for empty."""
    t = repr(text)[1:-1] or "∅"
    return t if len(t) <= n else t[: n - 1] + "…"


def cache_layer_bars(step: StepRecord | None, *, height: int = 300, width: int | None = None) -> go.Figure:
    """KV cache bytes per layer after one step: used (solid) and allocated (outline). Trace 0 = used."""
    if step is None:
        return message_figure("No step yet.", title="KV cache per layer", height=height, width=width)
    layers = list(range(len(step.cache_bytes_used)))
    fig = go.Figure([
        go.Bar(x=layers, y=list(step.cache_bytes_used), name="used", marker_color=COLORS["kv"],
               customdata=[format_bytes(b) for b in step.cache_bytes_used],
               hovertemplate="layer %{x}<br>used %{customdata}<extra></extra>"),
        go.Bar(x=layers, y=[a - u for a, u in zip(step.cache_bytes_allocated, step.cache_bytes_used)],
               name="reserved", marker=dict(color="rgba(0,0,0,0)", line=dict(color=COLORS["muted"], width=1)),
               customdata=[format_bytes(b) for b in step.cache_bytes_allocated],
               hovertemplate="layer %{x}<br>allocated %{customdata}<extra></extra>"),
    ])
    fig.update_layout(barmode="stack", bargap=0.15)
    fig.update_yaxes(title="bytes", tickformat="~s", ticksuffix="B")
    plot_px = (width or HALF_WIDTH) - 80
    fig.update_xaxes(title="layer", tick0=0, dtick=int_dtick(len(layers), plot_px, 18), tickangle=0,
                     range=[-0.6, len(layers) - 0.4])
    base_layout(fig, f"KV cache per layer · {step.cache_length} positions · {format_bytes(step.cache_total_used)}",
                height=height, width=width)
    return legend_on_top(fig)
