"""RunView in a real JupyterLab, attached to a run file that a training job in a subprocess is still writing:
the loss curve grows on screen while the job runs, with its heatmaps drawn beside it. Screenshots go to
artifacts/browser/."""

from __future__ import annotations

import time

NOTEBOOK = "tests/browser/fixtures/run_view_live.ipynb"
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
    assert lab.plot_titled(view, "Gradient norm per module").evaluate("(gd) => gd.data[0].z.length") > 0
    assert not lab.problems()
