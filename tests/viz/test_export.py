"""Exports are standalone: plotly.js inline, no CDN or remote script; PNG via matplotlib."""

from __future__ import annotations

import re

import pytest
from conftest import causal_probs, make_record

from workbench.capture import GradientHistory
from workbench.errors import InputError
from workbench.viz import (
    as_history,
    attention_heatmap,
    attention_heatmap_mpl,
    grad_flow_mpl,
    memory_bars_mpl,
    memory_breakdown,
    report_html,
    save_html,
    save_png,
)

REMOTE_SCRIPT = re.compile(r"<script[^>]+src=[\"']?(https?:)?//", re.I)
TOPOJSON_DEFAULT = re.compile(r"topojsonURL:\{[^{}]*\}")  # plotly.js's config schema entry for geo maps
NEW_PLOT = re.compile(r'Plotly\.newPlot\(\s*"')  # one call per figure (some bundles name the function too)


def assert_standalone(text: str) -> None:
    # the inlined bundle names cdn.plot.ly once, as the default topojson URL for geo maps (unused here; its
    # path differs between plotly releases); nothing may load plotly.js (or anything else) from a remote script
    assert len(TOPOJSON_DEFAULT.findall(text)) == 1
    assert TOPOJSON_DEFAULT.sub("", text).count("cdn.plot.ly") == 0
    assert not REMOTE_SCRIPT.search(text)
    assert NEW_PLOT.search(text)
    assert len(text) > 1_000_000  # the plotly.js bundle itself is inline


def test_save_html_is_standalone(tmp_path):
    fig = attention_heatmap(make_record(causal_probs(2, 8)), 1)
    path = save_html([fig, fig], tmp_path / "a.html", title="two maps")
    text = path.read_text()
    assert_standalone(text)
    assert len(NEW_PLOT.findall(text)) == 2 and text.count("plotly.js v") == 1  # bundle included once
    with pytest.raises(InputError, match=".html"):
        save_html(fig, tmp_path / "a.png")


def test_report_html(tiny_run, tmp_path):
    _, _, tr = tiny_run
    path = report_html(tr, tmp_path / "report.html", tokens=[f"t{i}" for i in range(12)])
    text = path.read_text()
    assert_standalone(text)
    for needle in ("blocks.0.attn", "Head metrics", "Gradient norms", "Memory per layer", "t11"):
        assert needle in text
    assert len(NEW_PLOT.findall(text)) >= 8


def test_png_exports(tiny_run, tmp_path):
    model, opt, tr = tiny_run
    figs = [attention_heatmap_mpl(tr.attention[0], 1), grad_flow_mpl(as_history(tr)),
            memory_bars_mpl(memory_breakdown(tr, model=model, optimizer=opt)), grad_flow_mpl(GradientHistory())]
    for i, fig in enumerate(figs):
        path = save_png(fig, tmp_path / f"f{i}.png")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(InputError, match="matplotlib"):
        save_png(attention_heatmap(None), tmp_path / "x.png")
