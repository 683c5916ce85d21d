"""Attention figures from `AttentionRecord`s: one head's map, all heads of a layer, and the
layer x head metric matrix. Every function ships at most `max_cells` x `max_cells` values per map,
so a 1k-token trace stays light in the browser (window or pool first, never the full S x S)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
import torch
import torch.nn.functional as F
from plotly.subplots import make_subplots

from ..capture.records import HEAD_METRICS, AttentionRecord
from ..errors import InputError
from .style import ATTN_SCALE, COLORS, HALF_WIDTH, base_layout, int_dtick, message_figure, token_labels

MAX_CELLS = 256  # largest window side shipped for one head
GRID_SIDE = 48  # side of each pooled small multiple
LEAK = 1e-4  # weight above the diagonal that counts as a causal-mask leak in the overlay
NO_ATTENTION = ("No attention captured. Run `with workbench.trace(model, attention=True) as tr: model(ids)` "
                "and pass `tr`.")
METRIC_INFO = {
    "entropy": ("entropy (nats)", "Viridis"), "sink": ("weight on first token", "Oranges"),
    "prev": ("weight on previous token", "Greens"), "future_max": ("max weight above diagonal", "Reds"),
    "distance": ("mean |query - key|", "Purples"), "diag": ("weight on own position", "Blues"),
}


@dataclass(frozen=True)
class Axes:
    """Absolute positions of the map's rows (queries) and columns (key windows of `key_width`)."""

    queries: list[int]
    keys: list[int]
    key_width: int


def layer_records(records: Sequence[AttentionRecord], call: int = 0) -> dict[int, AttentionRecord]:
    """Layer ordinal -> the record of that layer's `call`-th call (sorted by layer)."""
    out = {r.layer: r for r in records if r.call == call}
    return dict(sorted(out.items()))


def axes(rec: AttentionRecord) -> Axes:
    """Row and column positions of a (possibly downsampled) map."""
    qf, kf = rec.downsample
    S = rec.full_shape[3]
    return Axes([rec.query_offset + q for q in rec.queries], list(range(0, S, kf)), kf)


def layer_maps(rec: AttentionRecord, batch_index: int = 0) -> np.ndarray:
    """(H', T', S') float32 maps of the stored heads of one batch row; raises if the map was not kept."""
    if rec.map is None:
        raise InputError(f"layer {rec.layer} kept metrics only (map skipped for the byte budget); "
                         "trace fewer layers/heads or raise attention_budget_bytes.")
    return rec.map[batch_index].float().numpy()


def head_index(rec: AttentionRecord, head: int) -> int:
    if head not in rec.heads:
        raise InputError(f"head {head} of layer {rec.layer} was not stored (stored: {rec.heads}); "
                         "trace with attention_heads=None to keep every head.")
    return rec.heads.index(head)


def window(n: int, start: int, size: int = MAX_CELLS) -> slice:
    """A slice of at most `size` items starting near `start`, clamped into [0, n)."""
    start = max(0, min(int(start), max(0, n - size)))
    return slice(start, min(n, start + size))


def attention_heatmap(rec: AttentionRecord | None, head: int = 0, tokens: Sequence[str] | None = None, *,
                      q_start: int = 0, k_start: int = 0, max_cells: int = MAX_CELLS,
                      causal_overlay: bool = True, maps: np.ndarray | None = None,
                      height: int = 520) -> go.Figure:
    """One head's attention (query rows x key columns), windowed to max_cells x max_cells.

    Trace 0 is the heatmap, trace 1 marks weights above the diagonal larger than LEAK (red x).
    `maps` may pass a cached `layer_maps(rec)` to skip the float16 -> float32 conversion.
    """
    if rec is None:
        return message_figure(NO_ATTENTION, title="Attention")
    if rec.map is None:
        return message_figure(f"Layer {rec.layer}: map not stored (byte budget); metrics only. "
                              "Trace fewer layers or raise attention_budget_bytes.", title="Attention")
    data = heatmap_data(rec, head, tokens, q_start=q_start, k_start=k_start, max_cells=max_cells, maps=maps)
    fig = go.Figure([
        go.Heatmap(z=data["z"], x=data["x"], y=data["y"], colorscale=ATTN_SCALE, zmin=0, zmax=data["zmax"],
                   colorbar=dict(title=dict(text="weight", side="right"), thickness=12),
                   hovertemplate="query %{y}<br>key %{x}<br>weight %{z:.4f}<extra></extra>"),
        go.Scatter(x=data["leak_x"], y=data["leak_y"], mode="markers", name="above diagonal",
                   marker=dict(symbol="x", size=9, color=COLORS["bad"], line=dict(width=1)),
                   hovertemplate="LEAK: query %{y} sees future key %{x}<extra></extra>", showlegend=False),
    ])
    fig.update_yaxes(autorange="reversed", title="query", type="category", tickfont=dict(size=10))
    fig.update_xaxes(title="key" + (f" (windows of {data['kw']})" if data["kw"] > 1 else ""),
                     type="category", tickangle=-60, tickfont=dict(size=10), side="bottom")
    base_layout(fig, heatmap_title(rec, head, data), height=height)
    fig.update_layout(shapes=causal_shapes(data) if causal_overlay else [])
    return fig


def heatmap_title(rec: AttentionRecord, head: int, data: dict) -> str:
    B, H, T, S = rec.full_shape
    extra = f" · showing {len(data['y'])}×{len(data['x'])} of {T}×{S}" if data["windowed"] else ""
    ds = f" · downsampled ×{rec.downsample[0]}" if rec.downsample[0] > 1 else ""
    return f"Layer {rec.layer} · head {head}{extra}{ds}"


def heatmap_data(rec: AttentionRecord, head: int, tokens: Sequence[str] | None, *, q_start: int = 0,
                 k_start: int = 0, max_cells: int = MAX_CELLS, maps: np.ndarray | None = None) -> dict:
    """The arrays a single-head heatmap needs: z (window), labels, leak markers, staircase bounds."""
    ax = axes(rec)
    check_tokens(rec, tokens)
    maps = layer_maps(rec) if maps is None else maps
    qs, ks = window(len(ax.queries), q_start, max_cells), window(len(ax.keys), k_start, max_cells)
    z = maps[head_index(rec, head), qs, ks]  # (t, s) window
    qpos, kpos = ax.queries[qs], ax.keys[ks]
    y = token_labels(tokens, qpos)
    x = token_labels(tokens, kpos, ax.key_width)
    above = np.asarray(kpos)[None, :] > np.asarray(qpos)[:, None]  # (t, s) key after query
    li, lj = np.nonzero(above & (z > LEAK))
    # first column above the diagonal in each row (len(kpos) when none): bounds of the grey region
    first = [int(np.searchsorted(kpos, q, side="right")) for q in qpos]
    return dict(z=z, x=x, y=y, leak_x=[x[j] for j in lj], leak_y=[y[i] for i in li], first=first,
                kw=ax.key_width, zmax=float(max(z.max(), 1e-6)) if z.size else 1.0,
                windowed=(len(qpos), len(kpos)) != (len(ax.queries), len(ax.keys)))


def causal_shapes(data: dict) -> list[dict]:
    """A translucent staircase over the cells above the diagonal (keys after the query)."""
    first, n_cols = data["first"], len(data["x"])
    if not first or all(f >= n_cols for f in first):
        return []
    pts = []
    for i, f in enumerate(first):  # category axes: cell (i, j) spans [j-0.5, j+0.5]
        pts += [(f - 0.5, i - 0.5), (f - 0.5, i + 0.5)]
    pts += [(n_cols - 0.5, len(first) - 0.5), (n_cols - 0.5, -0.5)]
    path = "M " + " L ".join(f"{x},{y}" for x, y in pts) + " Z"
    return [dict(type="path", path=path, xref="x", yref="y", fillcolor="rgba(120,120,120,0.13)",
                 line=dict(color="rgba(196,78,82,0.6)", width=1, dash="dot"), layer="above")]


def check_tokens(rec: AttentionRecord, tokens: Sequence[str] | None) -> None:
    if tokens is not None and len(tokens) < rec.full_shape[3]:
        raise InputError(f"tokens has {len(tokens)} labels but layer {rec.layer} attends over "
                         f"{rec.full_shape[3]} keys; pass one label per position (tokenizer.token_strings(ids)).")


def pooled(maps: np.ndarray, side: int = GRID_SIDE) -> tuple[np.ndarray, int]:
    """Average-pool (H, T, S) maps so neither side exceeds `side`; returns (maps, factor)."""
    f = max(1, math.ceil(max(maps.shape[1:]) / side))
    if f == 1:
        return maps, 1
    t = torch.from_numpy(np.ascontiguousarray(maps))
    return F.avg_pool2d(t[None], f, ceil_mode=True)[0].numpy(), f  # (H, T/f, S/f)


def heads_grid(rec: AttentionRecord | None, tokens: Sequence[str] | None = None, *, side: int = GRID_SIDE,
               cols: int | None = None, maps: np.ndarray | None = None, height: int | None = None,
               width: int | None = None) -> go.Figure:
    """Small multiples of every stored head of one layer (pooled to side x side), one shared colour bar."""
    if rec is None:
        return message_figure(NO_ATTENTION, title="All heads")
    if rec.map is None:
        return message_figure(f"Layer {rec.layer}: map not stored; metrics only.", title="All heads")
    small, f = pooled(layer_maps(rec) if maps is None else maps, side)
    n = small.shape[0]
    cols = cols or min(n, 6)
    rows = math.ceil(n / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[f"head {h}" for h in rec.heads],
                        horizontal_spacing=0.02, vertical_spacing=0.08 / max(rows, 1) + 0.02)
    for i in range(n):
        fig.add_trace(go.Heatmap(z=small[i], coloraxis="coloraxis", name=f"head {rec.heads[i]}",
                                 hovertemplate="q≈%{y}<br>k≈%{x}<br>w=%{z:.3f}<extra>head " + str(rec.heads[i])
                                 + "</extra>"), row=i // cols + 1, col=i % cols + 1)
    fig.update_xaxes(showticklabels=False, showgrid=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, autorange="reversed")
    pool = f" · pooled {f}×{f}" if f > 1 else ""
    base_layout(fig, f"Layer {rec.layer}: all heads{pool}", height=height or 150 * rows + 70, width=width)
    fig.update_layout(coloraxis=dict(colorscale=ATTN_SCALE, cmin=0, colorbar=dict(thickness=10, title="w")))
    fig.update_annotations(font_size=11)
    return fig


def metric_matrix(records: Sequence[AttentionRecord], metric: str = "entropy", *,
                  height: int | None = None) -> go.Figure:
    """Layer x head matrix of one per-head metric (rows: layers, columns: heads). Click cells to drill."""
    if not records:
        return message_figure(NO_ATTENTION, title="Head metrics")
    if metric not in HEAD_METRICS:
        raise InputError(f"unknown head metric {metric!r}; choose one of {HEAD_METRICS}.")
    layers = layer_records(records, call=min(r.call for r in records))
    z = np.array([layers[layer].metrics.get(metric, []) for layer in layers], dtype=np.float64)  # (L, H)
    label, scale = METRIC_INFO[metric]
    zmax = max(1e-6, float(np.nanmax(z))) if z.size else 1.0
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(z.shape[1])), y=list(layers), colorscale=scale, zmin=0, zmax=zmax,
        texttemplate="%{z:.2f}" if z.size <= 400 else None, textfont=dict(size=9),
        colorbar=dict(title=dict(text=label, side="right"), thickness=12), xgap=1, ygap=1,
        hovertemplate="layer %{y} · head %{x}<br>" + label + " = %{z:.4g}<extra>click to inspect</extra>"))
    fig.update_xaxes(title="head", dtick=1)
    fig.update_yaxes(title="layer", autorange="reversed", dtick=1 if len(layers) <= 32 else None)
    leak = metric == "future_max" and float(np.nanmax(z)) > 1e-6
    title = f"Head metrics: {label}" + (" · FUTURE LEAK DETECTED" if leak else "")
    return base_layout(fig, title, height=height or max(260, 18 * len(layers) + 110))


def token_attention_layers(attention: torch.Tensor | None, tokens: Sequence[str] | None = None, *,
                           head: int | None = None, max_keys: int = MAX_CELLS,
                           height: int = 300, width: int | None = None) -> go.Figure:
    """The newest token's attention (L, H, S) as a layers x keys heatmap (mean over heads, or one head).

    Layers get integer ticks; every key is labelled while labels fit (else plotly thins them)."""
    if attention is None:
        return message_figure("No per-step attention: create the session with capture_attention=True.",
                              title="New token's attention across layers", height=height, width=width)
    a = attention.float()
    z = (a.mean(1) if head is None else a[:, head]).numpy()  # (L, S)
    L, S = z.shape
    ks = slice(max(0, S - max_keys), S)
    x = token_labels(tokens, list(range(S))[ks])
    fig = go.Figure(go.Heatmap(z=z[:, ks], x=x, y=list(range(L)), colorscale=ATTN_SCALE, zmin=0,
                               colorbar=dict(thickness=10, title="w"),
                               hovertemplate="layer %{y}<br>key %{x}<br>weight %{z:.4f}<extra></extra>"))
    plot_w, plot_h = (width or HALF_WIDTH) - 150, height - 150  # minus margins and colour bar
    fig.update_xaxes(type="category", tickangle=-60, tickfont=dict(size=10), title="key", automargin=True,
                     dtick=1 if plot_w / max(len(x), 1) >= 11 else None)
    fig.update_yaxes(title="layer", autorange="reversed", tick0=0, dtick=int_dtick(L, plot_h, 13),
                     tickfont=dict(size=10))
    which = "mean over heads" if head is None else f"head {head}"
    return base_layout(fig, f"New token's attention across layers ({which})", height=height, width=width)


def attention_heatmap_mpl(rec: AttentionRecord, head: int = 0, tokens: Sequence[str] | None = None, *,
                          q_start: int = 0, k_start: int = 0, max_cells: int = 64):
    """Static matplotlib version of `attention_heatmap` (for papers and PNG export)."""
    import matplotlib.pyplot as plt

    data = heatmap_data(rec, head, tokens, q_start=q_start, k_start=k_start, max_cells=max_cells)
    n = max(len(data["x"]), len(data["y"]))
    fig, ax = plt.subplots(figsize=(min(12, 3 + 0.18 * n), min(11, 2.5 + 0.16 * n)), dpi=110)
    im = ax.imshow(data["z"], cmap="Blues", vmin=0, aspect="auto", interpolation="nearest")
    step = max(1, n // 40)
    ax.set_xticks(range(0, len(data["x"]), step), data["x"][::step], rotation=70, fontsize=7)
    ax.set_yticks(range(0, len(data["y"]), step), data["y"][::step], fontsize=7)
    ax.set_xlabel("key")
    ax.set_ylabel("query")
    ax.set_title(heatmap_title(rec, head, data), fontsize=10, loc="left")
    fig.colorbar(im, ax=ax, fraction=0.04, label="weight")
    fig.tight_layout()
    return fig
