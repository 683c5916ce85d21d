"""The patching heatmap and its HTML: pure functions of a PatchingResult, values drawn where they belong."""

from __future__ import annotations

import math

import numpy as np
import pytest

from workbench.interventions.record import PatchingResult
from workbench.viz.patching import patching_figure, patching_html


def result(clean: float = 2.0) -> PatchingResult:
    return PatchingResult(site="resid", layers=[0, 1], layer_names=["blocks.0", "blocks.1"], columns=[0, 3],
                          column_labels=["0 'a'", "3 'b'"], values=[[0.0, 1.0], [0.5, 2.0]], clean=clean,
                          corrupted=0.0)


def test_scores_are_normalised_between_corrupted_and_clean():
    assert result().scores == [[0.0, 0.5], [0.25, 1.0]]
    assert result().top(2) == [(1, 3, 1.0), (0, 3, 0.5)]


def test_the_heatmap_draws_the_score_per_layer_and_column():
    fig = patching_figure(result())
    heat = fig.data[0]
    np.testing.assert_array_equal(np.asarray(heat.z, dtype=float), [[0.0, 0.5], [0.25, 1.0]])
    assert list(heat.y) == ["L0", "L1"] and list(heat.x) == ["0 'a'", "3 'b'"]
    assert heat.zmid == 0 and heat.zmin == -1 and heat.zmax == 1
    assert heat.customdata[1][1][1] == "2"  # the raw metric in the hover


def test_the_metric_is_drawn_when_clean_equals_corrupted():
    same = result(clean=0.0)
    assert all(math.isnan(s) for row in same.scores for s in row)
    fig = patching_figure(same)
    np.testing.assert_array_equal(np.asarray(fig.data[0].z, dtype=float), same.values)
    assert "metric" in fig.layout.title.text


@pytest.mark.parametrize("site, kind", [("heads", "head"), ("attn", "position")])
def test_the_html_has_the_strongest_cells(site, kind):
    r = result()
    r.site = site
    page = str(patching_html(r, include_plotlyjs=False))
    assert f"<th>{kind}</th>" in page and "<code>blocks.1</code></td><td>3 &#39;b&#39;</td><td>2</td><td>1.000" in page
