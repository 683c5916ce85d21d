"""PatchingView without a browser: the toggle redraws the figure, a click shows the cell."""

from __future__ import annotations

import numpy as np
import pytest
from plotly.callbacks import InputDeviceState, Points

from workbench.errors import InputError
from workbench.interventions.record import PatchingResult
from workbench.widgets.patching import PatchingView


@pytest.fixture
def result() -> PatchingResult:
    return PatchingResult(site="heads", layers=[0, 1], layer_names=["m.0.attn.o", "m.1.attn.o"], columns=[0, 1, 2],
                          column_labels=["h0", "h1", "h2"], values=[[0.0, 1.0, 4.0], [2.0, 3.0, 0.5]], clean=4.0,
                          corrupted=0.0, notes=["a note"])


def test_the_toggle_switches_between_score_and_metric(result):
    view = PatchingView(result)
    np.testing.assert_array_equal(np.asarray(view.figure.data[0].z, dtype=float), np.asarray(result.scores))
    view.measure.value = "metric"
    np.testing.assert_array_equal(np.asarray(view.figure.data[0].z, dtype=float), np.asarray(result.values))
    assert view.figure.layout.title.text.startswith("Activation patching (heads): metric")
    assert "a note" in " ".join(getattr(w, "value", "") for w in view.children)


def test_clicking_a_cell_shows_its_values(result):
    view = PatchingView(result)
    view.figure.data[0]._dispatch_on_click(Points(point_inds=[(1, 2)], xs=[2], ys=[1], trace_name=None,
                                                  trace_index=0), InputDeviceState())
    assert "m.1.attn.o" in view.detail.value and "h2" in view.detail.value and "metric 0.5 " in view.detail.value
    assert "score 0.125" in view.detail.value


def test_a_wrong_argument_is_refused():
    with pytest.raises(InputError, match="result of workbench.interventions.patch_positions"):
        PatchingView("not a result")  # type: ignore[arg-type]
