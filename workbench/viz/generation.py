"""Figures and HTML for stepwise generation (`StepRecord`s): text so far, top-k bars, cache per layer."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go

from .style import COLORS, base_layout, format_bytes, message_figure


def text_html(token_texts: Sequence[str], prompt_length: int, *, probs: Sequence[float] = ()) -> str:
    """The sequence as HTML: prompt muted, generated tokens plain, the newest one highlighted.

    probs[i] is the probability of generated token i (shown on hover)."""
    parts = []
    n = len(token_texts)
    for i, t in enumerate(token_texts):
        text = html.escape(t).replace("\n", "⏎<br>")
        if i < prompt_length:
            parts.append(f"<span style='color:#777'>{text}</span>")
            continue
        g = i - prompt_length
        tip = f" title='step {g}: p={probs[g]:.3f}'" if g < len(probs) else ""
        style = ("background:#FFE08A;border-radius:3px;outline:1px solid #E1A23A;font-weight:600"
                 if i == n - 1 else "background:#EAF2FB;border-radius:3px")
        parts.append(f"<span style='{style}'{tip}>{text}</span>")
    return ("<div class='wb-text' style='font-family:ui-monospace,Menlo,monospace;font-size:13px;"
            "white-space:pre-wrap;line-height:1.7;padding:8px 10px;border:1px solid #e3e3e3;border-radius:6px;"
            "max-height:160px;overflow:auto'>" + "".join(parts) + "</div>")


def topk_bars(step: Any | None, *, height: int = 300) -> go.Figure:
    """Top-k next-token probabilities of one step; the chosen token in the accent colour."""
    if step is None:
        return message_figure("Press Step to generate a token.", title="Next-token candidates", height=height)
    texts = [repr(t)[1:-1] or "∅" for t in step.candidate_texts]
    colors = [COLORS["accent"] if i == step.token_id else COLORS["params"] for i in step.candidate_ids]
    fig = go.Figure(go.Bar(x=list(step.candidate_probs)[::-1], y=[f"{t} ({i})" for t, i in
                                                                    zip(texts, step.candidate_ids)][::-1],
                           orientation="h", marker_color=colors[::-1], texttemplate="%{x:.3f}",
                           textposition="outside", hovertemplate="%{y}<br>p = %{x:.4f}<extra></extra>"))
    fig.update_xaxes(title="probability", range=[0, min(1.0, max(step.candidate_probs) * 1.25 + 0.02)])
    fig.update_yaxes(type="category", tickfont=dict(size=11))
    title = f"Step {step.step}: chose {step.token_text!r} · p={step.token_prob:.3f} · H={step.entropy:.2f} nats"
    return base_layout(fig, title, height=height)


def cache_layer_bars(step: Any | None, *, height: int = 300) -> go.Figure:
    """KV cache bytes per layer after one step: used (solid) and allocated (outline). Trace 0 = used."""
    if step is None:
        return message_figure("No step yet.", title="KV cache per layer", height=height)
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
    fig.update_layout(barmode="stack", legend=dict(orientation="h", y=1.0, x=1, xanchor="right", yanchor="bottom"))
    fig.update_yaxes(title="bytes", tickformat="~s", ticksuffix="B")
    fig.update_xaxes(title="layer", dtick=1 if len(layers) <= 32 else None)
    base_layout(fig, f"KV cache per layer · {step.cache_length} positions · {format_bytes(step.cache_total_used)}",
                height=height)
    fig.update_layout(margin=dict(t=84))
    return fig
