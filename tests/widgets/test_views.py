"""Widget logic without a browser: controls change figure data to the right layer/head/step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from plotly.callbacks import InputDeviceState, Points

import workbench as wb
from workbench.capture import GradientHistory, trace
from workbench.errors import InputError
from workbench.generation import GenerationRequest, GenerationSession
from workbench.widgets import AttentionView, GenerationStepper, GradientFlow, LayerInspector, MemoryPanel, show

TOKENS = [f"w{i}" for i in range(12)]


def _z(view: AttentionView) -> np.ndarray:
    return np.asarray(view.heatmap.data[0].z)


def _notices(view) -> str:
    return " ".join(w.value for w in view.children if "wb-notice" in getattr(w, "value", ""))


def test_layer_and_head_selectors_update_the_map(tiny_trace):
    view = AttentionView(tiny_trace, TOKENS)
    recs = {a.layer: a for a in tiny_trace.attention}
    np.testing.assert_array_equal(_z(view), recs[0].map[0, 0].float().numpy())
    view.layer.value = 1
    np.testing.assert_array_equal(_z(view), recs[1].map[0, 0].float().numpy())
    view.head.value = 3
    np.testing.assert_array_equal(_z(view), recs[1].map[0, 3].float().numpy())
    np.testing.assert_allclose(view.grid.data[3].z, recs[1].map[0, 3].float().numpy())  # small multiples too
    assert "Layer 1 · head 3" in view.heatmap.layout.title.text
    assert list(view.heatmap.data[0].x)[-1] == "11 w11"


def test_clicking_a_metric_cell_drills_down(tiny_trace):
    view = AttentionView(tiny_trace, TOKENS)
    cell = Points(point_inds=[(1, 2)], xs=[2], ys=[1], trace_name=None, trace_index=0)
    view.matrix.data[0]._dispatch_on_click(cell, InputDeviceState())
    assert (view.layer.value, view.head.value) == (1, 2)
    np.testing.assert_array_equal(_z(view), tiny_trace.attention[1].map[0, 2].float().numpy())
    box = view.matrix.layout.shapes[0]
    assert (box.x0, box.y0) == (1.5, 0.5)  # the selected cell is outlined


def test_metric_selector_updates_matrix(tiny_trace):
    view = AttentionView(tiny_trace, TOKENS)
    view.metric.value = "prev"
    np.testing.assert_allclose(view.matrix.data[0].z, [a.metrics["prev"] for a in tiny_trace.attention])
    assert "previous token" in view.matrix.layout.title.text


def test_long_sequence_windows(tiny):
    ids = torch.randint(0, 256, (1, 300), generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), trace(tiny, attention=True, shapes=False, stats=False, timing=False) as tr:
        tiny(ids)
    view = AttentionView(tr, max_cells=128)
    assert _z(view).shape == (128, 128) and view.q_start.layout.display == "flex"
    view.q_start.value = 160
    view.k_start.value = 80
    np.testing.assert_array_equal(_z(view), tr.attention[0].map[0, 0, 160:288, 80:208].float().numpy())
    assert all(np.asarray(t.z).shape[0] <= 48 for t in view.grid.data)  # pooled small multiples


def test_missing_attention_and_bad_tokens(tiny):
    with torch.no_grad(), trace(tiny) as tr:
        tiny(torch.tensor([[1, 2, 3]]))
    assert "attention=True" in _notices(AttentionView(tr))
    assert "gradients=True" in _notices(GradientFlow(tr))
    with torch.no_grad(), trace(tiny, attention=True) as tr2:
        tiny(torch.tensor([[1, 2, 3]]))
    with pytest.raises(InputError, match="one label per position"):
        AttentionView(tr2, ["a"])


def test_layer_inspector_filter_sort_select(tiny_trace):
    view = LayerInspector(tiny_trace)
    assert len(view.rows) == len(tiny_trace.records)
    view.filter.value = "mlp.up"
    assert [r.name for r in view.rows] == ["blocks.0.mlp.up", "blocks.1.mlp.up"]
    view.filter.value = ""
    view.sort.value = "params"
    params = [r.params for r in view.rows]
    assert params == sorted(params, reverse=True)
    target = tiny_trace.find("blocks.1.attn")[0]
    view.select(target.index)
    np.testing.assert_allclose(view.histogram.data[0].x, target.samples)
    assert "blocks.1.attn" in view.detail.value and "(1, 12, 64)" in view.detail.value
    view.depth.value = 0
    assert [r.depth for r in view.rows] == [0]
    assert "module records" in _notices(LayerInspector(None))


def test_gradient_flow_updates_live_and_throttles(tiny, chars):
    hist = GradientHistory()
    live = GradientFlow(hist, min_interval=0.0)
    slow = GradientFlow(hist, min_interval=1e9)
    assert live.notice.layout.display == "flex"
    opt = torch.optim.SGD(tiny.parameters(), lr=0.0)
    ids = torch.tensor([chars.encode("hello world")])
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(tiny(ids)[0, :-1], ids[0, 1:]).backward()
        hist.append(tiny)
    tiny.zero_grad(set_to_none=True)
    assert np.asarray(live.heatmap.data[0].z).shape == (len(hist.modules), 3)
    assert live.notice.layout.display == "none"
    np.testing.assert_allclose(live.bars.data[0].y, [v for v in hist.norms[-1] if not np.isnan(v)])
    assert slow.draws == 1  # throttled: nothing drawn since construction
    slow.update()
    assert np.asarray(slow.heatmap.data[0].z).shape[1] == 3
    live.close()
    hist.append(tiny)  # a closed view no longer listens
    assert np.asarray(live.heatmap.data[0].z).shape[1] == 3


def test_memory_panel_with_optimizer(tiny_trace, tiny):
    opt = torch.optim.Adam(tiny.parameters())
    for p in tiny.parameters():
        opt.state[p] = {"exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
    panel = MemoryPanel(tiny_trace, model=tiny, optimizer=opt)
    opt_trace = panel.bars.data[3]
    assert sum(opt_trace.y) == 2 * sum(p.numel() * 4 for p in tiny.parameters())
    assert "Optimizer state not shown" not in " ".join(h.value for h in panel.hints.children)
    hints = " ".join(h.value for h in MemoryPanel(tiny_trace).hints.children)
    assert "optimizer=opt" in hints


def test_stepper_buttons(tiny, chars):
    view = GenerationStepper(tiny, chars, "abc")
    s = view.session
    view.step_button.click()
    assert len(s.generated_ids) == 1 and len(view.growth.data[0].x) == 1
    assert list(view.growth.data[0].y) == [s.history[0].cache_total_used]
    assert "FFE08A" in view.text.value.split("<span")[-1]  # the newest token is highlighted
    assert len(view.topk.data[0].x) == 10
    np.testing.assert_allclose(np.asarray(view.attention.data[0].z), s.history[-1].attention.mean(1).numpy(),
                               rtol=1e-6)
    view.n.value = 4
    view.run_button.click()
    assert len(s.generated_ids) == 5 and len(view.growth.data[0].x) == 5
    assert list(view.cache_bars.data[0].y) == list(s.history[-1].cache_bytes_used)
    view.reset_button.click()
    assert s.generated_ids == [] and len(view.growth.data[0].x) == 0
    view.prompt.value = "xyz!"
    view.reset_button.click()
    assert view.session.prompt_ids == chars.encode("xyz!")


def test_stepper_shows_the_edits_that_steer_it(tiny, chars):
    steer = wb.Add("blocks.0", torch.full((64,), 3.0))
    plain = GenerationStepper(tiny, chars, "abc")
    steered = GenerationStepper(tiny, chars, "abc", edits=[steer])
    assert plain.edits.value == "" and "edits: Add(module=blocks.0, value=tensor(64,))" in steered.edits.value
    plain.run(4)
    steered.run(4)
    assert steered.session.generated_ids != plain.session.generated_ids  # the edit steers every step
    with wb.edit(tiny, wb.Zero("blocks.1.mlp", positions=[0])):
        steered.step()
    assert "Add(module=blocks.0" in steered.edits.value and "Zero(module=blocks.1.mlp, positions=[0])" in \
        steered.edits.value  # an enclosing block's edit is named too, for the step it ran in
    assert steered.session.history[-1].edits[1] == "Zero(module=blocks.1.mlp, positions=[0])"


def test_stepper_reports_errors_instead_of_raising(tiny, chars):
    view = GenerationStepper(tiny, chars, "a" * 318)
    view.run(5)  # the model's max_seq_len=320 stops it
    assert "max_seq_len" in " ".join(w.value for w in view.messages.children)


def test_stepper_decodes_as_its_request_says(tiny, chars):
    request = GenerationRequest(max_new_tokens=3, do_sample=True, temperature=1.5, seed=2)
    view = GenerationStepper(tiny, chars, "abc", request, fast=False)
    view.run(8)
    alone = GenerationSession(tiny, chars, "abc", request).run(8)
    assert view.session.generated_ids == [r.token_id for r in alone] and len(alone) == 3
    assert view.session.finish_reason == "length"


def test_memory_panel_follows_a_session(tiny, chars):
    view = GenerationStepper(tiny, chars, "abc")
    panel = MemoryPanel(view.session)
    view.run(3)
    panel.update()
    assert len(panel.growth.data[0].x) == 3
    kv = dict(zip(panel.bars.data[4].x, panel.bars.data[4].y))
    assert [kv["blocks.0"], kv["blocks.1"]] == view.session.cache.layer_bytes_used()
    assert kv["embed"] == 0


def test_show_dashboard(tiny, chars, tmp_path):
    dash = show(tiny, chars, "hello there", backward=True)
    assert list(dash.tabs.titles) == ["Modules", "Attention", "Memory", "Gradients", "Logit lens", "Generate"]
    assert all(p.grad is None for p in tiny.parameters())  # grads restored
    assert len(dash.views["Gradients"].bars.data[0].x) > 0
    assert len(dash.views["Attention"].records) == 2
    fwd = show(tiny, chars, "hello", generate=False)
    assert "gradients=True" in _notices(fwd.views["Gradients"]) and "Generate" not in fwd.views
    for name, view in dash.views.items():
        text = view.save_html(tmp_path / f"{name}.html").read_text()
        assert "Plotly.newPlot" in text and "<script src=\"https://" not in text


PAYLOAD = "<script>alert(1)</script>\"'><img src=x onerror=alert(2)>"


def test_hostile_names_are_escaped_in_the_inspector_detail_and_the_gradient_flags(tiny_trace):
    """A trace file can carry any string: module types, paths and tensor paths reach the page escaped."""
    import dataclasses

    target = tiny_trace.find("blocks.1.attn")[0]
    hostile = dataclasses.replace(target, type=PAYLOAD, name=PAYLOAD,
                                  inputs=[dataclasses.replace(m, path=PAYLOAD, dtype=PAYLOAD) for m in target.inputs])
    view = LayerInspector(tiny_trace)
    view._by_index[hostile.index] = hostile
    view.select(hostile.index)
    assert "<script>" not in view.detail.value and "<img" not in view.detail.value
    assert "&lt;script&gt;" in view.detail.value  # shown, as text

    hist = GradientHistory()
    flow = GradientFlow(hist, min_interval=0.0)
    hist.modules, hist.norms, hist.steps = [PAYLOAD], [[1e-12], [1e-12]], [0, 1]  # vanishing: flagged
    flow.update()
    assert PAYLOAD in hist.flagged() and "&lt;script&gt;" in flow.flags.value
    assert "<script>" not in flow.flags.value and "<img" not in flow.flags.value
