"""notebooks/07_porting_a_model.ipynb in a real JupyterLab: it runs with no error output, the Compare view
renders its divergence plot with the noise band and one line per case, its case boxes hide a line, and its
diagnosis tab names the cause. Screenshots go to artifacts/browser/."""

from __future__ import annotations

NOTEBOOK = "notebooks/07_porting_a_model.ipynb"


def test_porting_notebook_runs_and_its_compare_view_works(lab):
    lab.open(NOTEBOOK)
    lab.run_all(timeout_s=240)
    lab.wait_rendered(".js-plotly-plot", 1)
    lab.wait_idle(timeout_s=30)
    assert lab.unexecuted_cells() == []
    problems = lab.problems()
    assert problems == [], "\n".join(problems)
    view = lab.views("Compare").first
    assert view.count() == 1
    view.scroll_into_view_if_needed()
    plot = lab.plot_titled(view, "Divergence along depth")
    names = [t.get("name") for t in lab.traces(plot)]
    assert names[1].startswith("noise") and {"batch", "cached", "first divergence"} <= set(names)
    assert "rotates adjacent pairs" in view.inner_text()
    lab.shot("compare-view", view)
    view.locator(".widget-checkbox", has_text="batch").locator("input").click()  # its label is not a widget-label
    lab.page.wait_for_function(
        """(gd) => gd.data.some(t => t.name === 'batch' && t.visible === false)""", arg=plot.element_handle(),
        timeout=10_000)
    lab.shot("compare-view-cases", view)
