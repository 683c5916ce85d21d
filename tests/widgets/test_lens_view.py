"""`LogitLensView`: the metric and top-k controls redraw from the record, the target box reruns the lens on the
model (a refused target becomes a notice), the dashboard has the lens as a tab, and hostile token text is escaped
in every HTML widget and on the saved page."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_html_safety import assert_safe, widget_html
from torch import nn

from workbench.errors import InputError
from workbench.interventions import logit_lens
from workbench.viz.lens import lens_heatmap
from workbench.widgets import LogitLensView, show

PAYLOAD = "<script>alert(1)</script>"


def _z(view: LogitLensView) -> np.ndarray:
    return np.asarray(view.heatmap.data[0].z, dtype=float)


def _notices(view: LogitLensView) -> str:
    return " ".join(w.value for w in view.messages.children)


@pytest.fixture(scope="module")
def lens(tiny, chars):
    return logit_lens(tiny, "hello world", tokenizer=chars, top_k=3)


def test_the_metric_and_top_k_controls_redraw_from_the_record(lens):
    view = LogitLensView(lens)
    np.testing.assert_array_equal(_z(view)[:, :-1], np.array([row[:-1] for row in lens.target_probs]))
    view.metric.value = "entropy"
    np.testing.assert_array_equal(_z(view), np.array(lens.entropy))
    assert "entropy" in view.heatmap.layout.title.text
    view.metric.value = "rank"
    np.testing.assert_allclose(_z(view)[:, :-1], np.log10([row[:-1] for row in lens.target_ranks]))
    assert len(view.heatmap.data[0].customdata[1][0].split("<br>")) == 4 + 3
    view.top_k.value = 1
    assert len(view.heatmap.data[0].customdata[1][0].split("<br>")) == 4 + 1
    assert view.target.disabled and view.top_k.max == 3  # no model: nothing to rerun


def test_each_metric_redraws_with_its_own_colour_range(lens):
    """A redraw updates the heatmap in place: a range the previous metric set must not stay (prob's zmax=1 would
    saturate the rank scale at rank 10)."""
    view = LogitLensView(lens)
    for metric in ("rank", "entropy", "prob", "entropy", "rank"):
        view.metric.value = metric
        trace, fresh = view.heatmap.data[0], lens_heatmap(lens, metric, top_k=lens.top_k).data[0]
        assert (trace.zmin, trace.zmax) == (fresh.zmin, fresh.zmax)
        assert list(trace.colorbar.tickvals or ()) == list(fresh.colorbar.tickvals or ())


def test_the_target_box_reruns_the_lens_and_refusals_are_notices(tiny, chars, lens):
    view = LogitLensView(lens, model=tiny, tokenizer=chars)
    view.target.value = "o"
    o = chars.encode("o")[0]
    assert view.lens.targets == (o,) * lens.n_positions and not _notices(view)
    expected = logit_lens(tiny, "hello world", tokenizer=chars, target="o", top_k=3)
    np.testing.assert_array_equal(_z(view), np.array(expected.target_probs, dtype=float))
    assert "target &#39;o&#39;" in view.heatmap.layout.title.text
    view.target.value = "40"  # an id
    assert view.lens.targets == (40,) * lens.n_positions
    view.target.value = "ab"
    assert "encodes to 2 tokens" in _notices(view) and view.lens.targets == (40,) * lens.n_positions
    view.target.value = ""  # back to each position's next token
    assert view.lens.targets == lens.targets and not _notices(view)
    view.top_k.value = 6  # beyond the record's 3: rerun
    assert view.lens.top_k == 6 and len(view.heatmap.data[0].customdata[0][0].split("<br>")) == 4 + 6


def test_bad_arguments(lens):
    with pytest.raises(InputError, match="lens must be a LogitLens"):
        LogitLensView("lens")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="metric must be one of"):
        LogitLensView(lens, metric="logit")


def test_the_dashboard_has_a_logit_lens_tab(tiny, chars, tmp_path):
    dash = show(tiny, chars, "hello", generate=False)
    view = dash.views["Logit lens"]
    assert isinstance(view, LogitLensView) and view.lens.tokens == tuple("hello")
    assert "Logit lens" in list(dash.tabs.titles)
    page = view.save_html(tmp_path / "lens.html").read_text()
    assert page.count("Plotly.newPlot") == 1 and "ln_f → lm_head" in page


def test_a_model_without_a_lens_gets_a_notice_tab(chars):
    class NoBlocks(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb, self.out = nn.Embedding(96, 8), nn.Linear(8, 96)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.out(self.emb(ids))

    dash = show(NoBlocks(), chars, "hi", generate=False)
    text = " ".join(widget_html(dash.views["Logit lens"]))
    assert "No logit lens for this model" in text and "no transformer blocks found" in text


class HostileChars:
    """The chars tokenizer, except that "x" decodes to a script tag."""

    eos_token_id = None

    def encode(self, text: str) -> list[int]:
        return [ord(c) - 32 for c in text]

    def decode(self, ids) -> str:
        return "".join(PAYLOAD if chr(32 + int(i)) == "x" else chr(32 + int(i)) for i in ids)


def test_hostile_tokens_are_escaped_in_the_view_and_its_page(tiny, tmp_path):
    tok = HostileChars()
    view = LogitLensView(logit_lens(tiny, "axbx", tokenizer=tok, top_k=3), model=tiny, tokenizer=tok)
    view.target.value = "x"
    assert not _notices(view) and view.lens.target_texts == (PAYLOAD,) * 4
    for value in widget_html(view):
        assert_safe(value, PAYLOAD)
    page = view.save_html(tmp_path / "hostile.html").read_text()
    assert_safe(page, PAYLOAD)
    assert "&lt;script&gt;" in view.heatmap.layout.title.text
