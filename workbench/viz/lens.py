"""The logit lens as figures: a layers × positions heatmap of the target's probability, its rank or the entropy,
with the top-1 token written in each cell and the top-k on hover; and the offline page of all three.

Token text is hostile input: every string that plotly renders (cell text, hover, axis labels) is HTML-escaped
here (plotly turns `&lt;` back into a visible `<` and would otherwise read `<b>` or `<br>` in a token as markup),
and the page goes through `write_html`, which escapes whatever is not `safehtml` Markup.
"""

from __future__ import annotations

import math
from pathlib import Path

import plotly.graph_objects as go

from ..errors import InputError
from ..interventions.lens import LogitLens
from ..safehtml import Markup, html, join, plotly_div, text
from .export import write_html
from .style import FULL_WIDTH, base_layout

METRICS = ("prob", "rank", "entropy")
METRIC_INFO = {  # metric -> (colour bar title, colour scale, reversed)
    "prob": ("p(target)", "Blues", False),
    "rank": ("rank of target", "Viridis", True),
    "entropy": ("entropy (nats)", "Magma", True),
}
CELL_CHARS = 8  # longest top-1 text written in a cell


def lens_heatmap(lens: LogitLens, metric: str = "prob", *, top_k: int | None = None, height: int | None = None,
                 width: int | None = None) -> go.Figure:
    """Layers (rows, embeddings at the bottom) × positions (columns): `metric` per cell, the top-1 decoded token
    written in it, and on hover the layer, the target with its probability and rank, and the top_k tokens.

    metric "rank" is drawn on a log10 scale from rank 1 to the power of ten above the largest, labelled in ranks;
    "prob" from 0 to 1, "entropy" from 0 to its largest. Every metric sets its colour range: a view that redraws
    the figure in place (`LogitLensView`'s metric control) would otherwise keep the previous metric's."""
    if metric not in METRICS:
        raise InputError(f"metric={metric!r} is unknown; use one of {METRICS}.")
    k = lens.top_k if top_k is None else top_k
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= lens.top_k:
        raise InputError(f"top_k={top_k!r}: this lens kept the top {lens.top_k}; pass 1 to {lens.top_k}, or run "
                         "logit_lens with a larger top_k.")
    z = _values(lens, metric)  # (L+1, T)
    cells = [[plot_text(_short(_top_text(lens, layer, pos, 0))) for pos in range(lens.n_positions)]
             for layer in range(lens.n_layers)]
    hover = [[_hover(lens, layer, pos, k) for pos in range(lens.n_positions)] for layer in range(lens.n_layers)]
    title, scale, reverse = METRIC_INFO[metric]
    bar: dict[str, object] = dict(title=title)
    top = max((v for row in z for v in row if not math.isnan(v)), default=1.0)
    zmax = 1.0 if metric == "prob" else float(math.ceil(max(1.0, top))) if metric == "rank" else max(top, 1e-6)
    if metric == "rank":
        ticks = list(range(0, int(zmax) + 1))
        bar.update(tickvals=ticks, ticktext=[f"{10 ** t:,}" for t in ticks])
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(lens.n_positions)), y=list(range(lens.n_layers)), text=cells, texttemplate="%{text}",
        textfont=dict(size=10), customdata=hover, hovertemplate="%{customdata}<extra></extra>", colorscale=scale,
        reversescale=reverse, zmin=0, zmax=zmax,  # set for every metric: a redraw keeps a range left unset
        colorbar=bar, xgap=1, ygap=1))
    fig.update_xaxes(title="position", tickmode="array", tickvals=list(range(lens.n_positions)),
                     ticktext=_position_labels(lens), tickangle=-45 if lens.n_positions > 8 else 0)
    fig.update_yaxes(title="layer (0 = embeddings)", tickmode="array", tickvals=list(range(lens.n_layers)),
                     ticktext=[str(i) for i in range(lens.n_layers)])
    rows = lens.n_layers
    base_layout(fig, plot_text(f"Logit lens · {_target_title(lens)} · {METRIC_INFO[metric][0]}"),
                height=height or min(900, max(320, 22 * rows + 150)), width=width or FULL_WIDTH)
    fig.update_layout(margin=dict(b=90))
    return fig


def _values(lens: LogitLens, metric: str) -> list[list[float]]:
    """(L+1, T) values to colour; NaN where the position has no target."""
    if metric == "entropy":
        return [list(row) for row in lens.entropy]
    if metric == "prob":
        return [[math.nan if p is None else p for p in row] for row in lens.target_probs]
    return [[math.nan if r is None else math.log10(r) for r in row] for row in lens.target_ranks]


def _hover(lens: LogitLens, layer: int, pos: int, k: int) -> str:
    """One cell's hover: escaped text pieces joined by <br> (the only markup)."""
    name = lens.layers[layer]
    lines = [f"layer {layer} · {name}", f"position {pos} · input {_token(lens, pos)!r}"]
    target, p, rank = lens.targets[pos], lens.target_probs[layer][pos], lens.target_ranks[layer][pos]
    if target is not None and p is not None:
        shown = lens.target_texts[pos] if lens.target_texts else f"#{target}"
        lines.append(f"target {shown!r}: p = {p:.4f}, rank {rank}")
    lines.append(f"entropy {lens.entropy[layer][pos]:.3f} nats · top {k}:")
    for i in range(k):
        lines.append(f"  {_top_text(lens, layer, pos, i)!r}  {lens.top_probs[layer][pos][i]:.4f}")
    return "<br>".join(plot_text(line) for line in lines)


def _top_text(lens: LogitLens, layer: int, pos: int, i: int) -> str:
    if lens.top_texts is not None:
        return lens.top_texts[layer][pos][i]
    return f"#{lens.top_ids[layer][pos][i]}"


def _token(lens: LogitLens, pos: int) -> str:
    return lens.tokens[pos] if lens.tokens is not None else f"#{lens.ids[pos]}"


def _position_labels(lens: LogitLens) -> list[str]:
    return [plot_text(f"{pos} {_short(_token(lens, pos), 12)}") for pos in range(lens.n_positions)]


def _target_title(lens: LogitLens) -> str:
    given = {t for t in lens.targets if t is not None}
    if len(given) == 1 and len(lens.targets) > 1 and lens.targets[-1] is not None:
        t = given.pop()
        shown = lens.target_texts[0] if lens.target_texts else f"#{t}"
        return f"target {shown!r}"
    return "target: the next input token"


def _short(token: str, n: int = CELL_CHARS) -> str:
    """A token as a visible, bounded label: whitespace shown (· for a space, ⏎), "∅" for empty."""
    t = token.replace(" ", "·").replace("\n", "⏎").replace("\t", "⇥") or "∅"
    return t if len(t) <= n else t[: n - 1] + "…"


def plot_text(value: str) -> str:
    """Text for a plotly label: HTML-escaped, so plotly shows a token's `<`, `>` and `&` as written."""
    return str(text(value))


def lens_html(lens: LogitLens, *, include_plotlyjs: bool = True) -> Markup:
    """The notebook view: a one-line summary, the probability heatmap and the per-position table."""
    return join("\n", [html("<p><b>{}</b></p>", summary(lens)),
                       plotly_div(lens_heatmap(lens, "prob"), include_plotlyjs=include_plotlyjs),
                       positions_table(lens)])


def save_lens(lens: LogitLens, path: str | Path) -> Path:
    """One offline page: the summary, the probability, rank and entropy heatmaps, and the per-position table."""
    parts: list[object] = [html("<p>{}</p>", summary(lens))]
    parts += [lens_heatmap(lens, m) for m in METRICS]
    parts.append(positions_table(lens))
    return write_html(path, f"Logit lens: {lens.model}", parts)


def positions_table(lens: LogitLens) -> Markup:
    """One row per position: the input token, the target, its rank at the last layer, the first layer from which
    it stays in the top k, and the last layer's top k with probabilities. Every value is escaped."""
    last, k = lens.n_layers - 1, lens.top_k
    rows = []
    for pos in range(lens.n_positions):
        target = lens.targets[pos]
        shown = "" if target is None else lens.target_texts[pos] if lens.target_texts else f"#{target}"
        rank = lens.target_ranks[last][pos]
        first = lens.first_layer_in_top(k, pos) if target is not None else None
        top = ", ".join(f"{_top_text(lens, last, pos, i)!r} {lens.top_probs[last][pos][i]:.3f}" for i in range(k))
        rows.append(html("<tr style='white-space:pre'><td>{}</td><td><code>{}</code></td><td><code>{}</code></td>"
                         "<td>{}</td><td>{}</td><td style='text-align:left'>{}</td></tr>", pos, repr(_token(lens, pos)),
                         repr(shown) if target is not None else "", "" if rank is None else rank,
                         "" if first is None else first, top))
    return html("<table class='wb'><tr><th>position</th><th>input</th><th>target</th><th>rank at the last layer"
                "</th><th>in the top {} from layer</th><th style='text-align:left'>top {} at the last layer</th></tr>"
                "{}</table>", k, k, join("", rows))


def summary(lens: LogitLens) -> str:
    return (f"{lens.model}: {lens.n_layers} layers (0 = embeddings) × {lens.n_positions} positions, decoded "
            f"through {lens.readout}; at the last layer it gives the model's own logits (largest gap "
            f"{_bound(lens.final_gap)}).")


def _bound(gap: float) -> str:
    """A float-noise gap as a bound ("0" or "< 1e-05"), never as digits that another machine would not print."""
    return "0" if gap == 0 else f"< 1e{math.ceil(math.log10(gap)) if gap > 0 else 0:+03d}"

