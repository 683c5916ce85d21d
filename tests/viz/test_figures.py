"""Figures are pure functions of records: their trace data must equal the record values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import causal_probs, make_record

from workbench.capture import GradientHistory
from workbench.errors import InputError
from workbench.viz import (
    attention_heatmap,
    grad_heatmap,
    grad_norm_bars,
    heads_grid,
    kv_growth,
    memory_bars,
    memory_breakdown,
    metric_matrix,
    text_html,
    token_attention_layers,
)
from workbench.viz.attention import MAX_CELLS


def test_heatmap_z_and_labels_equal_record(tiny_run):
    _, _, tr = tiny_run
    rec = tr.attention[1]
    tokens = [f"w{i}" for i in range(12)]
    fig = attention_heatmap(rec, 2, tokens)
    np.testing.assert_array_equal(fig.data[0].z, rec.map[0, 2].float().numpy())
    assert list(fig.data[0].y) == [f"{i} w{i}" for i in range(12)] == list(fig.data[0].x)
    assert len(fig.data[1].x) == 0  # a causal model leaks nothing
    assert fig.layout.shapes and fig.layout.shapes[0].type == "path"  # grey region above the diagonal
    assert "Layer 1 · head 2" in fig.layout.title.text


def test_leak_above_diagonal_is_marked():
    p = causal_probs(2, 6)
    p[1, 2, 4] = 0.3  # head 1, query 2 sees key 4 (the future)
    fig = attention_heatmap(make_record(p), 1)
    assert list(fig.data[1].x) == ["4"] and list(fig.data[1].y) == ["2"]
    assert len(attention_heatmap(make_record(p), 0).data[1].x) == 0
    assert attention_heatmap(make_record(p), 1, causal_overlay=False).layout.shapes == ()


def test_downsampled_axes_are_labelled_as_windows():
    rec = make_record(causal_probs(1, 16), downsample=4)
    fig = attention_heatmap(rec, 0)
    assert list(fig.data[0].x) == ["0–3", "4–7", "8–11", "12–15"]
    assert list(fig.data[0].y) == ["0", "4", "8", "12"]
    np.testing.assert_allclose(fig.data[0].z.sum(1), 1.0, atol=5e-3)  # windows keep rows summing to 1
    assert "windows of 4" in fig.layout.xaxis.title.text


def test_long_sequence_is_windowed():
    T = 300
    rec = make_record(causal_probs(1, T))
    fig = attention_heatmap(rec, 0, q_start=40, k_start=10)
    assert fig.data[0].z.shape == (MAX_CELLS, MAX_CELLS)
    np.testing.assert_array_equal(fig.data[0].z, rec.map[0, 0, 40:296, 10:266].float().numpy())
    assert fig.data[0].y[0] == "40" and fig.data[0].x[0] == "10"
    assert "showing 256×256 of 300×300" in fig.layout.title.text


def test_heads_grid_pools_every_head():
    p = causal_probs(3, 100)
    rec = make_record(p)
    fig = heads_grid(rec, side=50)
    assert len(fig.data) == 3
    expected = p[1].reshape(50, 2, 50, 2).mean((1, 3))  # 2x2 average pooling
    np.testing.assert_allclose(fig.data[1].z, expected.numpy(), atol=2e-3)


def test_metric_matrix_rows_are_layers(tiny_run):
    _, _, tr = tiny_run
    fig = metric_matrix(tr.attention, "sink")
    np.testing.assert_allclose(fig.data[0].z, [a.metrics["sink"] for a in tr.attention])
    assert list(fig.data[0].y) == [0, 1]
    with pytest.raises(InputError, match="unknown head metric"):
        metric_matrix(tr.attention, "bogus")
    leaky = make_record(causal_probs(2, 4), future_max=[0.0, 0.4])
    assert "FUTURE LEAK" in metric_matrix([leaky], "future_max").layout.title.text


def test_tokens_shorter_than_keys_raise(tiny_run):
    with pytest.raises(InputError, match="one label per position"):
        attention_heatmap(tiny_run[2].attention[0], 0, ["a", "b"])


def test_missing_data_figures_explain_what_to_capture():
    assert "attention=True" in attention_heatmap(None).layout.annotations[0].text
    assert "attention=True" in metric_matrix([]).layout.annotations[0].text
    assert "gradients=True" in grad_norm_bars(GradientHistory()).layout.annotations[0].text
    assert "memory=True" in memory_bars({}).layout.annotations[0].text
    assert "capture_attention=True" in token_attention_layers(None).layout.annotations[0].text


def _history() -> GradientHistory:
    h = GradientHistory(vanishing=1e-6, exploding=1e2)
    h.modules = ["a", "b", "c", "d"]
    h.steps = [0, 1, 2]
    h.norms = [[1.0, 1e-8, 5e3, float("nan")], [0.5, 1e-3, 2.0, float("inf")], [0.1, 1e-2, 3.0, 1.0]]
    return h


def test_grad_bars_log_scale_bands_and_flags():
    h = _history()
    fig = grad_norm_bars(h, step=0)
    assert list(fig.data[0].x) == ["a", "b", "c"] and list(fig.data[0].y) == [1.0, 1e-8, 5e3]
    assert fig.layout.yaxis.type == "log"
    colors = list(fig.data[0].marker.color)
    assert colors[0] != colors[1] and colors[2] != colors[0]  # vanishing and exploding stand out
    bands = fig.layout.shapes
    assert bands[0].y1 == 1e-6 and bands[1].y0 == 1e2
    assert list(grad_norm_bars(h, step=1).data[1].x) == ["d"]  # non-finite drawn apart
    assert "2 flagged" in fig.layout.title.text


def test_grad_heatmap_is_log10_of_norms():
    h = _history()
    fig = grad_heatmap(h)
    z = np.asarray(fig.data[0].z, dtype=float)
    assert z.shape == (4, 3)
    np.testing.assert_allclose(z[0], np.log10([1.0, 0.5, 0.1]))
    assert math.isnan(z[3, 0]) and z[3, 1] > z[2, 0]  # no gradient = blank, inf = above the top
    assert list(fig.data[0].x) == [0, 1, 2]


def test_memory_breakdown_counts_tied_params_once(tiny_run):
    model, opt, tr = tiny_run
    rows = memory_breakdown(tr, model=model, optimizer=opt)
    total_params = sum(p.numel() * p.element_size() for p in model.parameters())
    assert sum(r["params"] for r in rows.values()) == total_params
    state = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values())
    assert sum(r["optimizer"] for r in rows.values()) == state
    assert sum(r["grads"] for r in rows.values()) == total_params  # every parameter got a gradient
    assert rows["blocks.0"]["saved"] > 0 and "blocks.1" in rows
    fig = memory_bars(rows)
    assert [t.name for t in fig.data] == ["parameters", "gradients", "saved activations", "optimizer state",
                                          "KV cache"]
    assert list(fig.data[0].y) == [r["params"] for r in rows.values()]


def test_kv_in_breakdown_and_growth(tiny_run):
    model = tiny_run[0]
    cache = model.new_cache(1, 32)
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3, 4, 5]]), cache=cache)
    rows = memory_breakdown(model=model, cache=cache)
    assert [rows[f"blocks.{i}"]["kv"] for i in range(2)] == cache.layer_bytes_used()

    class Step:
        def __init__(self, i: int) -> None:
            self.step, self.cache_total_used, self.cache_total_allocated = i, 100 * (i + 1), 1000

    fig = kv_growth([Step(i) for i in range(3)])
    assert list(fig.data[0].y) == [100, 200, 300] and list(fig.data[1].y) == [1000] * 3


def test_token_attention_layers_mean_and_head():
    att = torch.rand(3, 2, 5)  # (L, H, S)
    np.testing.assert_allclose(token_attention_layers(att).data[0].z, att.mean(1).numpy(), rtol=1e-6)
    np.testing.assert_allclose(token_attention_layers(att, head=1).data[0].z, att[:, 1].numpy())


def test_text_html_highlights_newest_token():
    out = text_html(["<a>", " b", " c"], prompt_length=1, probs=[0.5, 0.25])
    assert "&lt;a&gt;" in out  # escaped
    newest = out.split("<span")[-1]
    assert " c" in newest and "FFE08A" in newest and "p=0.250" in newest


def test_memory_breakdown_counts_recomputed_blocks_once():
    """Gradient checkpointing calls every block twice (forward, then recompute in backward): its
    parameters must still be counted once, and its activations are no longer saved inside the block."""
    import torch.nn.functional as F

    import workbench as wb
    from workbench.capture import trace

    torch.manual_seed(0)
    model = wb.TransformerLM(wb.ModelConfig.preset("tiny")).train()
    model.gradient_checkpointing = True
    ids = torch.randint(0, 256, (1, 12))
    with trace(model, memory=True, gradients=True) as tr:
        logits = model(ids)  # (1, T, V)
        F.cross_entropy(logits[0, :-1], ids[0, 1:]).backward()
    assert len(tr.find("blocks.0")) == 2  # the recompute is recorded as a second call
    rows = memory_breakdown(tr, model=model)
    assert sum(r["params"] for r in rows.values()) == sum(p.numel() * p.element_size() for p in model.parameters())
    assert rows["blocks.0"]["saved"] == 0
