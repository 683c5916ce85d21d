"""notebooks/07_porting_a_model.ipynb in a real JupyterLab: it runs with no error output, the Compare view
renders its divergence plot with the noise band and one line per case, its case boxes hide a line, and its
diagnosis tab names the cause, and its weights tab shows the role table (every tensor with its role and the
reference tensor it equals) and the unmatched parameters of each side. Screenshots go to artifacts/browser/."""

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

    view.locator(".lm-TabBar-tab", has_text="weights").click()
    roles = view.locator("table.wb", has_text="its role")
    roles.wait_for(state="visible", timeout=10_000)
    rows = roles.evaluate("(t) => Array.from(t.rows).map(r => Array.from(r.cells).map(c => c.innerText.trim()))")
    assert rows[0][:5] == ["candidate", "its role", "reference", "its role", "relation"]
    # the port's q projection of block 0 is paired with HF's, and both read as that role
    q = next(r for r in rows[1:] if r[2] == "model.layers.0.self_attn.q_proj.weight")
    assert q[1] == q[3] == "block 0 q weight" and q[4] == "exact", q
    assert view.locator(".wb-unmatched-candidate").inner_text().strip() == "none"
    lab.shot("compare-view-weights", view)
