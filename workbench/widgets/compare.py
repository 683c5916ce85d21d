"""`CompareView`: a `wb.compare` result: divergence along depth, the diagnosis, the weight table."""

from __future__ import annotations

from typing import Any

import ipywidgets as W

from ..compare import Comparison
from ..safehtml import html
from ..viz import compare as vc
from ..viz.style import FULL_WIDTH
from .base import SafeHTML, View, check_arg, figure_widget, header, notice


class CompareView(View):
    """`CompareView(wb.compare(reference, candidate))`.

    The figure draws the error at each aligned point for each input case (the checkboxes pick the cases
    shown), the noise band below the tolerance, and the first divergence. Below, in tabs: the diagnosis (every
    fix tried there, and what it left of the gap), the role table (each candidate tensor, its role, the reference
    tensor it equals and its role; role swaps highlighted) with the parameters either side holds alone, and
    patching (the share of the logit gap each aligned point closes when the reference's activation is patched
    into the candidate, from `wb.compare(..., patching=True)`; a notice says how to compute it when the
    comparison holds none).
    """

    title = "Compare"

    def __init__(self, comparison: Comparison) -> None:
        check_arg("comparison", comparison, isinstance(comparison, Comparison), "the result of workbench.compare")
        super().__init__()
        self.comparison = comparison
        self.boxes = {case: W.Checkbox(value=True, description=case, indent=False,
                                       layout=W.Layout(width="110px")) for case in comparison.cases}
        self.figure = figure_widget(vc.divergence_figure(comparison), width=FULL_WIDTH)
        verdict = notice(comparison.verdict())
        self.diagnosis = SafeHTML(vc.diagnosis_html(comparison.diagnosis))
        self.weights = SafeHTML(vc.weights_html(comparison.weights))
        self.patching = SafeHTML(vc.patching_html(comparison.patching))
        self.patching_figure = (figure_widget(vc.patching_figure(comparison), width=FULL_WIDTH)
                                if comparison.patching is not None and comparison.patching.points else None)
        patching = W.VBox([w for w in (self.patching_figure, self.patching) if w is not None])
        tabs = W.Tab(children=[self.diagnosis, self.weights, patching])
        for i, name in enumerate(("diagnosis", "weights", "patching")):
            tabs.set_title(i, name)
        self.tabs = tabs
        for box in self.boxes.values():
            box.observe(self._show_cases, names="value")
        self.children = [header(self.title, f"{comparison.candidate_name} vs {comparison.reference_name}"),
                         verdict, W.HBox(list(self.boxes.values())), self.figure, tabs]

    def _show_cases(self, _: Any = None) -> None:
        shown = {case for case, box in self.boxes.items() if box.value}
        with self.figure.batch_update():
            for trace in self.figure.data:
                if trace.name in self.boxes:
                    trace.visible = trace.name in shown

    def export_parts(self) -> list[Any]:
        c = self.comparison
        return [html("<p><b>{}</b></p>", c.verdict()), *self.figures(), vc.diagnosis_html(c.diagnosis),
                vc.weights_html(c.weights), vc.patching_html(c.patching)]
