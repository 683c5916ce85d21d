"""`RunView` and the run figures: the view redraws only when the file grows (written by another connection, as a
job in another process writes it), its auto-refresh thread follows the file and stops on close, a replayed
step opens in the trace views with its findings, and text from the file is escaped."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import workbench as wb
from workbench.runs import ReplayRecord, RunEvent, RunWriter
from workbench.training import RecorderConfig, RunRecorder
from workbench.viz import runs as vr


def _writer(path: Path, keys: list[str] | None = None) -> RunWriter:
    w = RunWriter(path, {"model": "test"}, flush_every=1)
    w.declare("loss")
    w.declare("grad_norm/module", keys or ["a", "b"])
    return w


def _add(w: RunWriter, first: int, n: int) -> None:
    for s in range(first, first + n):
        w.add_step(s, {"loss": 3.0 - 0.1 * s}, {"grad_norm/module": [1.0 + s, 2.0]})


def test_refresh_redraws_only_when_the_file_grew(tmp_path: Path) -> None:
    path = tmp_path / "run.wbrun"
    view = wb.RunView(path, auto=False)  # no file yet: a notice, no draw
    assert view.draws == 0 and view.notice.layout.display == "flex" and not view.refresh()
    w = _writer(path)
    _add(w, 0, 3)
    assert view.refresh() and view.draws == 1 and view.notice.layout.display == "none"
    assert list(view.loss.data[0].x) == [0, 1, 2] and list(view.loss.data[0].y) == pytest.approx([3.0, 2.9, 2.8])
    assert not view.refresh() and view.draws == 1  # nothing new: no redraw
    _add(w, 3, 2)
    w.add_event(RunEvent(4, "loss_spike", "loss robust z 12.0", 2.6))
    assert view.refresh() and list(view.loss.data[0].x) == [0, 1, 2, 3, 4]
    assert list(view.loss.data[1].x) == [4] and list(view.loss.data[1].customdata) == [4]
    z = view.heatmaps["grad_norm/module"].data[0].z
    want = [[0.0, 0.30103, 0.47712, 0.60206, 0.69897], [0.30103] * 5]  # log10 of the norms, modules x steps
    assert [list(r) for r in z][0] == pytest.approx(want[0], abs=1e-5)
    assert [list(r) for r in z][1] == pytest.approx(want[1], abs=1e-5)
    w.close()
    view.close()


def test_auto_refresh_follows_the_file_and_stops_on_close(tmp_path: Path) -> None:
    path = tmp_path / "run.wbrun"
    w = _writer(path)
    _add(w, 0, 2)
    view = wb.RunView(path, interval=0.05)
    assert view.polling and view.draws == 1
    _add(w, 2, 3)
    deadline = time.monotonic() + 10
    while len(view.loss.data[0].x) < 5 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert list(view.loss.data[0].x) == [0, 1, 2, 3, 4]
    view.close()
    assert not view.polling
    w.close()


def test_a_replayed_step_opens_in_the_trace_views(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = wb.TransformerLM(wb.ModelConfig())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "run.wbrun"
    config = RecorderConfig(attention_every=1, doctor_checks=("nonfinite",))
    with RunRecorder(model, path, optimizer=opt, config=config, predicate=lambda s, _: s == 1) as rec:
        for batch in torch.randint(0, 256, (3, 2, 9), generator=torch.Generator().manual_seed(1)):
            def closure(batch: torch.Tensor = batch) -> torch.Tensor:
                opt.zero_grad()
                loss = F.cross_entropy(model(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten())
                loss.backward()
                return loss
            rec.step(closure)
            opt.step()
    view = wb.RunView(path, auto=False)
    assert [v for _, v in view.steps.options] == [None, 1]
    assert list(view.loss.data[1].marker.symbol) == ["circle"]  # filled: the step was replayed
    view.steps.value = 1  # as a click on the marker does
    assert view.replay is not None and view.replay.gradients
    findings, tabs = view.detail.children
    assert "Step 1" in findings.value and "nonfinite" in findings.value
    assert [type(c).__name__ for c in tabs.children] == ["LayerInspector", "GradientFlow", "AttentionView"]
    ent = view.entropy.data[0].z
    assert len(ent) == 2 and len(ent[0]) == 4  # the tiny default: 2 blocks x 4 heads
    page = view.save_html(tmp_path / "view.html").read_text()
    assert "Step 1" in page and "plotly" in page
    with pytest.raises(wb.RunFileError, match="not replayed"):
        view.open_step(2)
    view.close()
    with wb.RunFile(path) as run:
        assert "3 steps (last 2), 1 trigger events" in run._repr_html_()
        assert "nonfinite" in run.save_html(tmp_path / "run.html").read_text()


def test_text_from_the_file_is_escaped(tmp_path: Path) -> None:
    path = tmp_path / "run.wbrun"
    w = _writer(path, keys=["<b>evil</b>", "ok"])
    _add(w, 0, 2)
    w.add_event(RunEvent(1, "predicate", "<script>x</script>", 1.0))
    w.add_replay(ReplayRecord(1, "none.wbtrace", "<img src=x>", [{"check": "<i>c</i>", "status": "fail",
                                                                  "summary": "<b>s</b>"}]))
    w.close()
    with wb.RunFile(path) as run:
        assert list(vr.metric_heatmap(run, "grad_norm/module").data[0].y)[0] == "&lt;b&gt;evil&lt;/b&gt;"
        assert "&lt;script&gt;" in vr.loss_curve(run).data[1].text[0]
        block = str(vr.findings_html(run.replays()[0]))
        assert "<img" not in block and "<i>c" not in block and "&lt;b&gt;s&lt;/b&gt;" in block


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(wb.InputError, match="interval"):
        wb.RunView(tmp_path / "run.wbrun", interval=0)
    (tmp_path / "notes.txt").write_text("hello")
    view = wb.RunView(tmp_path / "notes.txt", auto=False)  # not a run file: said in the notice
    assert "not a run file" in view.notice.value
    view.close()


def test_non_finite_values_reach_the_browser_as_gaps(tmp_path: Path) -> None:
    """A NaN loss or norm is drawn as a gap (None): NaN is not JSON, and the widget's messages must stay valid."""
    import json

    path = tmp_path / "run.wbrun"
    w = _writer(path)
    w.add_step(0, {"loss": 2.0}, {"grad_norm/module": [1.0, 2.0]})
    w.add_step(1, {"loss": float("nan")}, {"grad_norm/module": [float("inf"), float("nan")]})
    w.add_event(RunEvent(1, "nonfinite", "loss", float("nan")))
    w.close()
    with wb.RunFile(path) as run:
        loss, heat = vr.loss_curve(run), vr.metric_heatmap(run, "grad_norm/module")
    assert list(loss.data[0].y) == [2.0, None] and list(loss.data[1].y) == [2.0]  # the marker at the top
    assert [list(r) for r in heat.data[0].z] == [[0.0, None], [pytest.approx(0.30103, abs=1e-5), None]]
    for fig in (loss, heat):
        json.dumps(fig.to_plotly_json(), allow_nan=False, default=list)  # raises on NaN or Inf


def test_every_widget_figure_is_sent_without_nan() -> None:
    """The widget boundary turns NaN and infinities in any figure's data into gaps (a replayed NaN step's trace
    views draw such figures), and leaves finite data as it was."""
    import json

    import plotly.graph_objects as go

    from workbench.widgets.base import figure_widget, replace_figure

    fig = go.Figure([go.Heatmap(z=[[1.0, float("nan")], [float("-inf"), 2.0]]), go.Scatter(y=[1.0, 2.0])])
    widget = figure_widget(fig)
    assert [list(r) for r in widget.data[0].z] == [[1.0, None], [None, 2.0]] and list(widget.data[1].y) == [1, 2]
    json.dumps(widget.to_plotly_json(), allow_nan=False, default=list)
    replace_figure(widget, go.Figure([go.Heatmap(z=[[float("nan")]]), go.Scatter(y=[float("inf"), 3.0])]))
    assert [list(r) for r in widget.data[0].z] == [[None]] and list(widget.data[1].y) == [None, 3.0]


def test_the_dashboard_shows_a_run_as_a_tab(tmp_path: Path) -> None:
    class Chars:
        eos_token_id = None

        def encode(self, text: str) -> list[int]:
            return [ord(c) - 32 for c in text]

        def decode(self, ids: list[int]) -> str:
            return "".join(chr(32 + int(i)) for i in ids)

    path = tmp_path / "run.wbrun"
    w = _writer(path)
    _add(w, 0, 4)
    w.close()
    model = wb.TransformerLM(wb.ModelConfig.preset("tiny")).eval()
    dash = wb.widgets.show(model, Chars(), "hello", generate=False, run=path)
    assert list(dash.tabs.titles)[-1] == "Training run"
    view = dash.views["Training run"]
    try:
        assert isinstance(view, wb.RunView) and view.refresh() is False  # drawn when built: nothing new
        assert list(view.loss.data[0].x) == [0, 1, 2, 3]
    finally:
        view.close()
    with pytest.raises(wb.WorkbenchError, match="run"):
        wb.widgets.show(model, Chars(), "hello", generate=False, run=3)
