"""`LogitLensView`: the logit lens heatmap with its controls: the metric, the target token and the top-k on hover."""

from __future__ import annotations

from typing import Any

import ipywidgets as W
from torch import nn

from ..errors import InterventionError
from ..interventions.lens import LogitLens, logit_lens
from ..safehtml import html
from ..viz import lens as vl
from .base import View, check_arg, figure_widget, header, is_count, notice, replace_figure

MAX_TOP_K = 20  # the largest top-k the control offers when the view can rerun the lens


class LogitLensView(View):
    """A `LogitLens` record as a layers × positions heatmap: `LogitLensView(lens, model=model, tokenizer=tok)`.

    The metric and top-k controls redraw from the record. Changing the target (a token id, or text the
    tokenizer makes one token; empty: each position's next token), or a top-k beyond the record's, reruns the
    lens, so it needs the model; without one those controls are off. A target the lens refuses is said in a
    notice, and the view keeps what it showed.
    """

    title = "Logit lens"

    def __init__(self, lens: LogitLens, *, model: nn.Module | None = None, tokenizer: Any = None,
                 metric: str = "prob", top_k: int | None = None) -> None:
        check_arg("lens", lens, isinstance(lens, LogitLens), "a LogitLens (from workbench.logit_lens)")
        check_arg("model", model, model is None or isinstance(model, nn.Module), "None or the lensed nn.Module")
        check_arg("metric", metric, metric in vl.METRICS, f"one of {vl.METRICS}")
        check_arg("top_k", top_k, top_k is None or is_count(top_k), "None or an integer >= 1")
        super().__init__()
        self.lens, self.model, self.tokenizer = lens, model, tokenizer
        most = MAX_TOP_K if model is not None else lens.top_k
        self.metric = W.Dropdown(options=[(vl.METRIC_INFO[m][0], m) for m in vl.METRICS], value=metric,
                                 description="Metric", layout=W.Layout(width="230px"))
        self.top_k = W.BoundedIntText(value=min(top_k or lens.top_k, max(most, lens.top_k)), min=1,
                                      max=max(most, lens.top_k), description="Top-k", layout=W.Layout(width="150px"))
        self.target = W.Text(value=self._target_value(), placeholder="next token", description="Target",
                             continuous_update=False, disabled=model is None, layout=W.Layout(width="260px"))
        for w in (self.metric, self.top_k, self.target):
            w.style.description_width = "52px"
        self.messages = W.VBox()
        self.heatmap = figure_widget(self._figure())
        self.metric.observe(self._redraw, names="value")
        self.top_k.observe(self._on_top_k, names="value")
        self.target.observe(self._on_target, names="value")
        self.children = [header(self.title, f"{lens.model} · {lens.n_layers} layers × {lens.n_positions} positions"),
                         W.HBox([self.metric, self.target, self.top_k], layout=W.Layout(flex_flow="row wrap")),
                         self.messages, self.heatmap]

    def _figure(self) -> Any:
        return vl.lens_heatmap(self.lens, self.metric.value, top_k=min(self.top_k.value, self.lens.top_k))

    def _target_value(self) -> str:
        """The target box's text for the record: empty for next tokens, else the target's text or id."""
        given = {t for t in self.lens.targets if t is not None}
        if len(given) != 1 or self.lens.targets[-1] is None:
            return ""
        t = given.pop()
        shown = self.lens.target_texts[0] if self.lens.target_texts else None
        return shown if shown else str(t)

    # --- events -----------------------------------------------------------------------------------
    def _redraw(self, _change: Any = None) -> None:
        replace_figure(self.heatmap, self._figure())

    def _on_top_k(self, _change: Any = None) -> None:
        if self.top_k.value > self.lens.top_k and self.model is not None:
            self._rerun(self.target.value)
        else:
            self._redraw()

    def _on_target(self, _change: Any = None) -> None:
        if self.model is not None:
            self._rerun(self.target.value)

    def _rerun(self, target_text: str) -> None:
        """The lens again with the target in the box and the top-k asked for; a refusal becomes a notice."""
        if self.model is None:
            return
        entry = target_text.strip()
        target: int | str | None = None if not target_text else int(entry) if entry.isdigit() else target_text
        try:
            lens = logit_lens(self.model, list(self.lens.ids), tokenizer=self.tokenizer, target=target,
                              top_k=max(self.top_k.value, self.lens.top_k), head=self.lens.head, norm=self.lens.norm)
        except InterventionError as err:
            self.messages.children = [notice(str(err))]
            return
        self.messages.children = []
        self.lens = lens
        self._redraw()

    def export_parts(self) -> list[Any]:
        return [html("<p>{}</p>", vl.summary(self.lens)), *self.figures()]
