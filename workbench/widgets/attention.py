"""`AttentionView`: layer/head selectors, one head's map, all heads, and the clickable metric matrix."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import ipywidgets as W
import numpy as np

from ..capture.records import HEAD_METRICS, AttentionRecord
from ..capture.trace import Trace
from ..safehtml import html, join
from ..viz import attention as va
from ..viz.style import FULL_WIDTH
from .base import SafeHTML, View, check_arg, figure_widget, header, is_count, notice, row

HEATMAP_WIDTH = 520  # the single-head map; the metric matrix takes the rest of FULL_WIDTH
CACHE_LAYERS = 8  # float32 layer maps kept in memory (SmolLM2, 256 tokens: 2.4 MB each)


class AttentionView(View):
    """Attention of a trace: `AttentionView(trace, tokens)`; tokens label both axes (one per position).

    Only a max_cells x max_cells window of one head and pooled small multiples go to the browser;
    the window sliders appear when a map is larger. Click a cell of the metric matrix to open that
    layer and head.
    """

    title = "Attention"

    def __init__(self, trace: Trace | Sequence[AttentionRecord] | None, tokens: Sequence[str] | None = None, *,
                 call: int = 0, layer: int | None = None, head: int = 0, metric: str = "entropy",
                 max_cells: int = va.MAX_CELLS) -> None:
        given = trace.attention if isinstance(trace, Trace) else [] if trace is None else trace
        check_arg("trace", trace, isinstance(given, (list, tuple))
                  and all(isinstance(r, AttentionRecord) for r in given), "a Trace, a list of AttentionRecords or None")
        check_arg("tokens", tokens, tokens is None or (isinstance(tokens, Sequence) and not isinstance(tokens, str)
                                                     and all(isinstance(t, str) for t in tokens)),
                  "None or a list of strings, one per position")
        check_arg("metric", metric, metric in HEAD_METRICS, f"one of {HEAD_METRICS}")
        check_arg("max_cells", max_cells, is_count(max_cells), "an integer >= 1")
        check_arg("call", call, is_count(call, 0), "an integer >= 0")
        check_arg("head", head, is_count(head, 0), "an integer >= 0")
        records: list[AttentionRecord] = list(given)
        super().__init__()
        self.tokens, self.max_cells = tokens, max_cells
        self.records = va.layer_records(records, call) if records else {}
        if not self.records:
            self.children = [header(self.title), notice(va.NO_ATTENTION)]
            return
        va.check_tokens(next(iter(self.records.values())), tokens)
        self._maps: OrderedDict[int, np.ndarray] = OrderedDict()
        self._busy = False
        first = layer if layer in self.records else next(iter(self.records))
        self.layer = W.Dropdown(options=[(f"layer {i}", i) for i in self.records], value=first, description="Layer",
                                layout=W.Layout(width="170px"))
        self.head = W.Dropdown(options=self._head_options(first), description="Head", layout=W.Layout(width="170px"))
        if head in self.records[first].heads:
            self.head.value = head
        self.metric = W.Dropdown(options=[(va.METRIC_INFO[m][0], m) for m in HEAD_METRICS], value=metric,
                                 description="Metric", layout=W.Layout(width="300px"))
        self.overlay = W.Checkbox(value=True, description="causal overlay", indent=False,
                                  layout=W.Layout(width="130px"))
        for w in (self.layer, self.head, self.metric):
            w.style.description_width = "48px"
        self.q_start = W.IntSlider(0, 0, 0, description="queries from", continuous_update=False)
        self.k_start = W.IntSlider(0, 0, 0, description="keys from", continuous_update=False)
        self.summary = SafeHTML()
        rec = self.records[first]
        self.heatmap = figure_widget(va.attention_heatmap(rec, self.head.value, tokens, max_cells=max_cells,
                                                          maps=self._layer_maps(first)))
        self.grid = figure_widget(va.heads_grid(rec, tokens, maps=self._layer_maps(first)), width=FULL_WIDTH)
        self.matrix = figure_widget(va.metric_matrix(records, metric, height=max(300, 18 * len(self.records) + 110)))
        self.matrix.data[0].on_click(self._on_cell)
        self.heatmap.layout.width, self.matrix.layout.width = HEATMAP_WIDTH, FULL_WIDTH - HEATMAP_WIDTH
        self._sync_sliders()
        self._mark_cell()
        self._update_summary()
        for w, fn in ((self.layer, self._on_layer), (self.head, self._on_head), (self.metric, self._on_metric),
                      (self.overlay, self._on_head), (self.q_start, self._on_head), (self.k_start, self._on_head)):
            w.observe(fn, names="value")
        B, H, T, S = rec.full_shape
        controls = W.HBox([self.layer, self.head, self.metric, self.overlay], layout=W.Layout(flex_flow="row wrap"))
        self.children = [
            header(self.title, f"{len(self.records)} layers × {H} heads · {T} queries × {S} keys"),
            controls, W.HBox([self.q_start, self.k_start]),
            row(W.VBox([self.heatmap, self.summary]), self.matrix),
            self.grid,
        ]

    # --- data -------------------------------------------------------------------------------------
    def _layer_maps(self, layer: int) -> np.ndarray | None:
        """float32 (H', T', S') maps of a layer, converted once and kept for the last CACHE_LAYERS layers."""
        rec = self.records[layer]
        if rec.map is None:
            return None
        if layer in self._maps:
            self._maps.move_to_end(layer)
        else:
            self._maps[layer] = va.layer_maps(rec)
            if len(self._maps) > CACHE_LAYERS:
                self._maps.popitem(last=False)
        return self._maps[layer]

    def _head_options(self, layer: int) -> list[tuple[str, int]]:
        return [(f"head {h}", h) for h in self.records[layer].heads]

    # --- events -----------------------------------------------------------------------------------
    def _on_layer(self, _change: Any = None) -> None:
        layer = self.layer.value
        opts = self._head_options(layer)
        if opts != list(self.head.options):
            self._busy = True
            try:
                keep = self.head.value
                self.head.options = opts
                self.head.value = keep if (f"head {keep}", keep) in opts else opts[0][1]
            finally:
                self._busy = False
        self._sync_sliders()
        self._redraw_heatmap()
        self._redraw_grid()
        self._mark_cell()
        self._update_summary()

    def _on_head(self, _change: Any = None) -> None:
        if self._busy:
            return
        self._redraw_heatmap()
        self._mark_cell()
        self._update_summary()

    def _on_metric(self, _change: Any = None) -> None:
        fig = va.metric_matrix(list(self.records.values()), self.metric.value)
        with self.matrix.batch_update():
            self.matrix.data[0].update(fig.data[0].to_plotly_json())
            self.matrix.layout.title.text = fig.layout.title.text

    def _on_cell(self, _trace: Any, points: Any, _state: Any) -> None:
        """A click on the metric matrix: open that layer and head."""
        if not points.point_inds:
            return
        layer, head = int(points.ys[0]), int(points.xs[0])
        if layer in self.records and head in self.records[layer].heads:
            self._busy = True
            try:
                self.layer.value = layer  # fires _on_layer, which redraws with the old head
            finally:
                self._busy = False
            self.head.value = head

    # --- drawing ----------------------------------------------------------------------------------
    def _sync_sliders(self) -> None:
        ax = va.axes(self.records[self.layer.value])
        for slider, n in ((self.q_start, len(ax.queries)), (self.k_start, len(ax.keys))):
            slider.max = max(0, n - self.max_cells)
            slider.step = max(1, self.max_cells // 8)
            slider.layout.display = "flex" if n > self.max_cells else "none"

    def _redraw_heatmap(self) -> None:
        rec = self.records[self.layer.value]
        maps = self._layer_maps(rec.layer)
        if maps is None:
            with self.heatmap.batch_update():
                self.heatmap.data[0].z, self.heatmap.data[1].x, self.heatmap.data[1].y = None, [], []
                self.heatmap.layout.title.text = f"Layer {rec.layer}: map not stored (byte budget); metrics only"
            return
        d = va.heatmap_data(rec, self.head.value, self.tokens, q_start=self.q_start.value,
                            k_start=self.k_start.value, max_cells=self.max_cells, maps=maps)
        with self.heatmap.batch_update():
            hm, leak = self.heatmap.data[0], self.heatmap.data[1]
            hm.z, hm.x, hm.y, hm.zmax = d["z"], d["x"], d["y"], d["zmax"]
            leak.x, leak.y = d["leak_x"], d["leak_y"]
            self.heatmap.layout.shapes = va.causal_shapes(d) if self.overlay.value else []
            self.heatmap.layout.title.text = va.heatmap_title(rec, self.head.value, d)

    def _redraw_grid(self) -> None:
        rec = self.records[self.layer.value]
        maps = self._layer_maps(rec.layer)
        if maps is None or len(self.grid.data) != maps.shape[0]:  # head count changed: rebuild
            fig = va.heads_grid(rec, self.tokens, maps=maps)
            self.grid.data = []
            self.grid.layout = fig.layout
            self.grid.layout.width = FULL_WIDTH
            self.grid.add_traces(list(fig.data))
            return
        small, f = va.pooled(maps)
        with self.grid.batch_update():
            for i, tr in enumerate(self.grid.data):
                tr.z = small[i]
            self.grid.layout.title.text = f"Layer {rec.layer}: all heads" + (f" · pooled {f}×{f}" if f > 1 else "")

    def _mark_cell(self) -> None:
        h, layer = self.head.value, self.layer.value
        self.matrix.layout.shapes = [dict(type="rect", x0=h - 0.5, x1=h + 0.5, y0=layer - 0.5, y1=layer + 0.5,
                                          line=dict(color="#C44E52", width=2.5))]

    def _update_summary(self) -> None:
        rec, h = self.records[self.layer.value], self.head.value
        cells = join("", (html("<tr><td style='padding:1px 0'>{}</td><td style='padding:1px 0 1px 16px;"
                                "text-align:right'><b>{:.4g}</b></td></tr>", va.METRIC_INFO[m][0], rec.metrics[m][h])
                           for m in HEAD_METRICS if m in rec.metrics))
        leak = rec.metrics.get("future_max", [0.0] * (h + 1))[h] > 1e-6
        warn = html("<div style='color:#C44E52;font-weight:600'>This head attends to future positions: "
                    "the causal mask leaks.</div>") if leak else ""
        self.summary.value = html("<div style='font-size:12px;line-height:1.6;padding-left:60px'>"
                                  "<b>Layer {}, head {}</b> <span style='color:#888'>({})</span>{}"
                                  "<table style='border-collapse:collapse'>{}</table></div>",
                                  rec.layer, h, rec.source, warn, cells)

    def static_figure(self) -> Any:
        return va.attention_heatmap_mpl(self.records[self.layer.value], self.head.value, self.tokens,
                                        q_start=self.q_start.value, k_start=self.k_start.value)
