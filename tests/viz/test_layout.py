"""Layout rules that keep figures readable in a notebook column: integer ticks on layer and step axes,
room for every bar, legends out of the title's way, explanations wrapped to the figure's width."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from workbench.viz import memory_bars, token_attention_layers
from workbench.viz.generation import cache_layer_bars, topk_bars
from workbench.viz.memory import kv_growth
from workbench.viz.style import HALF_WIDTH, int_dtick, message_figure


@pytest.mark.parametrize(("n", "pixels", "min_px", "expected"),
                         [(2, 200, 14, 1), (30, 200, 13, 2), (30, 200, 14, 5), (30, 370, 18, 2),
                          (100, 200, 14, 10), (1000, 600, 40, 100)])
def test_int_dtick_is_the_smallest_readable_integer_step(n, pixels, min_px, expected):
    step = int_dtick(n, pixels, min_px)
    assert step == expected
    assert step * pixels / n >= min_px


def _step(probs, chosen_id, n_layers=30):
    ids = tuple(range(100, 100 + len(probs)))
    return SimpleNamespace(
        step=3, token_id=chosen_id, token_text="tok", token_prob=0.9 if chosen_id not in ids else probs[0],
        entropy=1.0, candidate_ids=ids, candidate_texts=tuple(f"t{i}" for i in ids), candidate_probs=tuple(probs),
        cache_bytes_used=(10,) * n_layers, cache_bytes_allocated=(40,) * n_layers, cache_length=5,
        cache_total_used=10 * n_layers)


@pytest.mark.parametrize("top", [0.05, 0.364, 0.97, 1.0])
def test_topk_range_leaves_room_past_the_longest_bar(top):
    probs = [top] + [top / (i + 2) for i in range(9)]
    fig = topk_bars(_step(probs, 100))
    lo, hi = fig.layout.xaxis.range
    assert lo == 0 and hi >= top * 1.15  # the bar and its "0.364" label stay inside the axis
    assert max(fig.layout.xaxis.tickvals) <= 1.0  # no tick at an impossible probability
    assert fig.data[0].marker.color[-1] != fig.data[0].marker.color[0]  # chosen (first, drawn last) stands out


def test_topk_adds_a_bar_for_a_sampled_token_outside_the_top_k():
    fig = topk_bars(_step([0.05] * 10, chosen_id=7))
    assert len(fig.data[0].x) == 11 and fig.data[0].y[0].startswith("chosen: tok (7)")
    assert fig.layout.xaxis.range[1] >= 0.9 * 1.15


def test_layer_axes_use_integer_ticks():
    tiny = token_attention_layers(torch.rand(2, 4, 19), [f"t{i}" for i in range(19)], width=HALF_WIDTH)
    assert tiny.layout.yaxis.tick0 == 0 and tiny.layout.yaxis.dtick == 1
    assert tiny.layout.xaxis.dtick == 1  # 19 keys fit: every key labelled
    big = token_attention_layers(torch.rand(30, 9, 8), width=HALF_WIDTH)
    assert isinstance(big.layout.yaxis.dtick, int) and big.layout.yaxis.dtick > 1
    bars = cache_layer_bars(_step([0.5], 100), width=HALF_WIDTH)
    assert bars.layout.xaxis.range[1] > 29 and isinstance(bars.layout.xaxis.dtick, int)  # all 30 layers shown


def test_kv_growth_steps_are_integers_and_legend_sits_below_the_title():
    steps = [SimpleNamespace(step=i, cache_total_used=100 * (i + 1), cache_total_allocated=1000) for i in range(3)]
    fig = kv_growth(steps, width=HALF_WIDTH)
    assert fig.layout.xaxis.tick0 == 0 and fig.layout.xaxis.dtick == 1
    assert fig.layout.title.yref == "container" and fig.layout.title.yanchor == "top"
    assert fig.layout.legend.yanchor == "bottom" and fig.layout.margin.t >= 70  # a band of its own
    empty = kv_growth([], width=HALF_WIDTH)
    assert "Each step" in empty.layout.annotations[0].text and len(empty.data) == 2


def test_memory_legend_lists_only_kinds_present_at_the_right():
    rows = {"blocks.0": {"params": 10, "grads": 0, "saved": 5, "optimizer": 0, "kv": 0}}
    fig = memory_bars(rows)
    assert [t.name for t in fig.data if t.showlegend] == ["parameters", "saved activations"]
    assert fig.layout.legend.x > 1 and fig.layout.legend.orientation != "h"  # never over the title


def test_message_figure_wraps_to_its_width():
    text = "No memory data. Trace with `workbench.trace(model, memory=True)` and run backward inside it."
    narrow = message_figure(text, width=300).layout.annotations[0].text
    wide = message_figure(text, width=900).layout.annotations[0].text
    assert narrow.count("<br>") > wide.count("<br>")
    assert max(len(line) for line in narrow.split("<br>")) <= 40
    assert narrow.replace("<br>", " ") == text
