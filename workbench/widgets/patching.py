"""`PatchingView`: a patching sweep's heatmap, the measure it shows, and the cell under the cursor."""

from __future__ import annotations

from typing import Any

import ipywidgets as W

from ..interventions.record import PatchingResult
from ..safehtml import html
from ..viz import patching as vp
from ..viz.style import FULL_WIDTH
from .base import SafeHTML, View, check_arg, figure_widget, header, notice


class PatchingView(View):
    """`PatchingView(patch_positions(...))` or `PatchingView(patch_heads(...))`.

    The heatmap draws the normalised score of each cell (0: the patch changes nothing, 1: it restores the
    clean run) or the raw metric (the toggle); clicking a cell shows its module, metric and score below.
    """

    title = "Activation patching"

    def __init__(self, result: PatchingResult) -> None:
        check_arg("result", result, isinstance(result, PatchingResult),
                  "the result of workbench.interventions.patch_positions or patch_heads")
        super().__init__()
        self.result = result
        self.measure = W.ToggleButtons(options=list(vp.MEASURES), value=vp.shown_measure(result),
                                       layout=W.Layout(width="auto"))
        self.figure = figure_widget(vp.patching_figure(result, self.measure.value), width=FULL_WIDTH)
        self.detail = SafeHTML(html("<p class='wb-note'>{}</p>", "Click a cell for its values."))
        self.measure.observe(self._redraw, names="value")
        self.figure.data[0].on_click(self._clicked)
        notes = [notice(n) for n in result.notes]
        self.children = [header(self.title, result.summary()), *notes, self.measure, self.figure, self.detail]

    def _redraw(self, _: Any = None) -> None:
        fresh = vp.patching_figure(self.result, self.measure.value)
        with self.figure.batch_update():
            self.figure.data[0].z = fresh.data[0].z
            self.figure.data[0].colorscale = fresh.data[0].colorscale
            self.figure.data[0].zmid, self.figure.data[0].zmin = fresh.data[0].zmid, fresh.data[0].zmin
            self.figure.data[0].zmax = fresh.data[0].zmax
            self.figure.data[0].colorbar.title.text = fresh.data[0].colorbar.title.text
            self.figure.layout.title.text = fresh.layout.title.text

    def _clicked(self, _trace: Any, points: Any, _state: Any) -> None:
        if not points.point_inds:
            return
        i, j = points.point_inds[0]
        self.select(i, j)

    def select(self, row: int, column: int) -> None:
        """Show cell (row, column) of the result below the figure."""
        r = self.result
        self.detail.value = html(
            "<p><b>{}</b>, {} {}: metric {} (clean {}, corrupted {}), score {}</p>", r.layer_names[row],
            r.column_kind, r.column_labels[column], f"{r.values[row][column]:.5g}", f"{r.clean:.5g}",
            f"{r.corrupted:.5g}", f"{r.scores[row][column]:.3f}")

    def export_parts(self) -> list[Any]:
        return [html("<p><b>{}</b></p>", self.result.summary()), *self.figures()]
