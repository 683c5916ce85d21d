"""The logit lens figure and page: each cell's colour is the record's value for the metric, its text the top-1
token, its hover the target and the top-k; token text is escaped wherever plotly or a page shows it; the page is
offline, written through the registered export (`LogitLens.save_html`, `wb.viz.save_html`)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_export import assert_standalone

import workbench as wb
from workbench.errors import InputError
from workbench.interventions import LogitLens, logit_lens
from workbench.viz import lens_heatmap

PAYLOAD = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


class HostileTokens:
    """Id 7 decodes to a script tag, id 8 to `<b>`; every other id i to "t{i}"."""

    eos_token_id = None

    def encode(self, text: str) -> list[int]:
        return [int(t[1:]) for t in text.split()]

    def decode(self, ids) -> str:
        return "".join({7: PAYLOAD, 8: "<b>"}.get(int(i), f"t{int(i)}") for i in ids)


@pytest.fixture(scope="module")
def model() -> wb.TransformerLM:
    torch.manual_seed(0)
    return wb.TransformerLM(wb.ModelConfig.preset("tiny").replace(init_std=0.3)).eval()


@pytest.fixture(scope="module")
def lens(model) -> LogitLens:
    return logit_lens(model, [3, 7, 8, 40, 11, 7], tokenizer=HostileTokens(), top_k=4)


def _z(fig) -> np.ndarray:
    return np.asarray(fig.data[0].z, dtype=float)


def test_each_metric_colours_the_cells_with_the_records_values(lens):
    prob = _z(lens_heatmap(lens, "prob"))
    assert prob.shape == (lens.n_layers, lens.n_positions)
    expected = np.array([[np.nan if p is None else p for p in row] for row in lens.target_probs], dtype=float)
    np.testing.assert_array_equal(prob, expected)  # NaN at the last position: no next token
    assert np.isnan(prob[:, -1]).all() and not np.isnan(prob[:, :-1]).any()
    rank = lens_heatmap(lens, "rank")
    np.testing.assert_allclose(_z(rank)[:, :-1], np.log10([row[:-1] for row in lens.target_ranks]))
    assert list(rank.data[0].colorbar.ticktext)[:3] == ["1", "10", "100"]
    worst = max(r for row in lens.target_ranks for r in row if r is not None)
    assert rank.data[0].zmin == 0 and rank.data[0].zmax == max(1, math.ceil(math.log10(worst)))  # next power of 10
    assert len(rank.data[0].colorbar.tickvals) == rank.data[0].zmax + 1
    entropy = lens_heatmap(lens, "entropy")
    np.testing.assert_array_equal(_z(entropy), np.array(lens.entropy))
    assert (entropy.data[0].zmin, entropy.data[0].zmax) == (0, max(max(row) for row in lens.entropy))
    assert (lens_heatmap(lens, "prob").data[0].zmin, lens_heatmap(lens, "prob").data[0].zmax) == (0, 1)


def test_cells_show_the_top_token_and_hover_the_top_k(lens):
    fig = lens_heatmap(lens, "prob", top_k=2)
    cells, hover = fig.data[0].text, fig.data[0].customdata
    layer, pos = 2, 0
    top = lens.top_texts[layer][pos]
    assert len(top[0]) <= 8 and cells[layer][pos] == top[0]  # "t123": short and plain
    lines = hover[layer][pos].split("<br>")
    assert lines[0] == "layer 2 · blocks.1" and lines[1] == "position 0 · input &#39;t3&#39;"
    target = lens.targets[pos]
    assert lines[2] == (f"target &#39;{'&lt;script&gt;alert(1)&lt;/script&gt;'}&#39;: "
                        f"p = {lens.target_probs[layer][pos]:.4f}, rank {lens.target_ranks[layer][pos]}")
    assert target == 7 and len(lines) == 4 + 2  # two top-k lines
    assert lines[-1].endswith(f"{lens.top_probs[layer][pos][1]:.4f}")
    assert "target" not in " ".join(hover[layer][-1].split("<br>")[2:3])  # the last position has no target
    with pytest.raises(InputError, match="top_k=9: this lens kept the top 4"):
        lens_heatmap(lens, top_k=9)
    with pytest.raises(InputError, match="metric='logit' is unknown"):
        lens_heatmap(lens, "logit")


def test_token_text_is_escaped_for_plotly(lens):
    fig = lens_heatmap(lens, "prob")
    labels = list(fig.layout.xaxis.ticktext)
    assert labels[1] == "1 &lt;script&gt;ale…" and labels[2] == "2 &lt;b&gt;"  # cut to 12 characters, then escaped
    strings = [*labels, *(t for row in fig.data[0].text for t in row), *(h for row in fig.data[0].customdata
                                                                        for h in row)]
    assert not [s for s in strings if "<script" in s or "<b>" in s]


def test_the_page_is_offline_escaped_and_written_by_the_registered_view(lens, tmp_path):
    page = lens.save_html(tmp_path / "lens.html").read_text()
    assert_standalone(page)
    assert page.count("Plotly.newPlot") == 3  # probability, rank, entropy
    assert PAYLOAD not in page and "blocks.1" in page and "ln_f → lm_head" in page
    row = (f"<tr style='white-space:pre'><td>0</td><td><code>&#39;t3&#39;</code></td>"
           f"<td><code>&#39;{ESCAPED}&#39;</code></td><td>{lens.target_ranks[-1][0]}</td>")
    assert row in page  # the per-position table: input, target (escaped), its rank at the last layer
    again = wb.viz.save_html(lens, tmp_path / "again.html").read_text()
    assert again.count("Plotly.newPlot") == 3 and PAYLOAD not in again
    block = lens._repr_html_()
    assert "Plotly.newPlot" in block and PAYLOAD not in block and "No HTML view is registered" not in block
    assert "largest gap 0" in block or "largest gap &lt; 1e" in block


def test_a_lens_without_a_tokenizer_labels_tokens_by_id(model):
    lens = logit_lens(model, [3, 7, 8], top_k=2)
    fig = lens_heatmap(lens, "rank")
    assert list(fig.layout.xaxis.ticktext) == ["0 #3", "1 #7", "2 #8"]
    assert fig.data[0].text[0][0] == f"#{lens.top_ids[0][0][0]}"
    assert math.isnan(float(_z(fig)[0, -1]))
