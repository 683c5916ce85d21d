"""RunView in a real JupyterLab, attached to a run file that a training job in a subprocess is still writing:
the loss curve grows on screen while the job runs, with its heatmaps drawn beside it. Screenshots go to
artifacts/browser/."""

from __future__ import annotations

import time

from playwright.sync_api import TimeoutError as PlaywrightTimeout

NOTEBOOK = "tests/browser/fixtures/run_view_live.ipynb"
GRADIENTS_DRAWN = """(el) => Array.from(el.querySelectorAll('.js-plotly-plot')).some(gd => gd.layout && gd.layout.title
    && String(gd.layout.title.text || '').startsWith('Gradient norm per module') && gd.data && gd.data[0]
    && gd.data[0].z && gd.data[0].z.length > 0)"""
LOSS_POINTS = """(gd) => (gd.data && gd.data[0] && gd.data[0].x) ? gd.data[0].x.length : 0"""


def test_the_loss_curve_grows_while_the_job_writes(lab):
    lab.open(NOTEBOOK)
    lab.run_all(timeout_s=120)
    lab.wait_rendered(".js-plotly-plot", 5, timeout_s=60)  # loss, three heatmaps, attention entropy
    (view,) = lab.views("Training run").all()
    loss = lab.plot_titled(view, "Loss")
    seen, deadline = [], time.monotonic() + 60
    while time.monotonic() < deadline:
        seen.append(loss.evaluate(LOSS_POINTS))
        if len(set(n for n in seen if n > 0)) >= 3:  # three different lengths on screen: it grew twice
            break
        time.sleep(0.4)
    lab.shot("run-view-live", view)
    grown = [n for n in seen if n > 0]
    assert len(set(grown)) >= 3 and grown == sorted(grown), seen
    # the heatmaps are redrawn after the loss curve at each poll: wait for the gradient norms to be on screen
    try:
        lab.page.wait_for_function(GRADIENTS_DRAWN, arg=view.element_handle(), timeout=30_000)
    except PlaywrightTimeout:
        lab.shot("run-view-no-gradients", view)
        raise AssertionError(f"no gradient heatmap drawn in 30 s: titles {lab.plot_titles(view)}, "
                             f"problems {lab.problems()}") from None
    assert lab.plot_titled(view, "Gradient norm per module").evaluate("(gd) => gd.data[0].z.length") > 0
    assert not lab.problems()
