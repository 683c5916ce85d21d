"""notebooks/08_interventions.ipynb in a real JupyterLab, run once for every assertion: it runs with no error output;
the steered stepper names its edit; the activation patching views draw the layers x positions and layers x heads
heatmaps; the logit lens view draws SmolLM2's layers x positions heatmap and redraws it as ranks when its Metric
control changes; the Compare view's patching tab shows the share of the logit gap each aligned point closes, all
of it at the planted bug. Screenshots go to artifacts/browser/."""

from __future__ import annotations

NOTEBOOK = "notebooks/08_interventions.ipynb"
PLOTS = 9  # the stepper's 4, two patching heatmaps, the lens heatmap, the Compare view's divergence and patching

# One cell of a heatmap's z, read from the plotly graph div.
_CELL = "([gd, row, col]) => Number(gd.data[0].z[row][col])"
# A table's rows as lists of cell texts.
_ROWS = "(t) => Array.from(t.rows).map(r => Array.from(r.cells).map(c => c.innerText.trim()))"


def test_interventions_notebook_runs_and_its_views_work(lab):
    lab.open(NOTEBOOK)
    lab.run_all(timeout_s=300)
    lab.wait_rendered(".js-plotly-plot", PLOTS)
    lab.wait_idle(timeout_s=30)
    assert lab.unexecuted_cells() == []
    problems = lab.problems()
    assert problems == [], "\n".join(problems)

    stepper = lab.views("Generation stepper").first
    assert "edits: Add(module=blocks.1, value=tensor(64,))" in stepper.inner_text()
    lab.shot("stepper-steered", stepper)

    sweeps = lab.views("Activation patching")
    assert sweeps.count() == 2
    for which, columns in enumerate((41, 4)):  # the 1 + 2L positions of the repeated sequence; 4 heads
        view = sweeps.nth(which)
        view.scroll_into_view_if_needed()
        z = lab.traces(view.locator(".js-plotly-plot").first)[0]["z"]
        assert (z["rows"], z["cols"]) == (2, columns), z
        lab.shot(f"patching-{('positions', 'heads')[which]}", view)

    lens = lab.views("Logit lens").first
    lens.scroll_into_view_if_needed()
    heatmap = lab.plot_titled(lens, r"Logit lens · target .*Paris.* · p\(target\)$")
    before = lab.traces(heatmap)[0]["z"]
    assert (before["rows"], before["cols"]) == (31, 5)  # the embeddings and 30 blocks x "The capital of France is"
    lab.shot("lens-prob", lens)
    lab.control(lens, "dropdown", "Metric").locator("select").select_option(label="rank of target")
    lab.page.wait_for_function("(gd) => String(gd.layout.title.text || '').endsWith('rank of target')",
                               arg=heatmap.element_handle(), timeout=15_000)
    lab.wait_idle(timeout_s=30)
    after = lab.traces(heatmap)[0]["z"]
    assert (after["rows"], after["cols"]) == (31, 5) and after["wsum"] != before["wsum"]
    zmin, zmax = heatmap.evaluate("(gd) => [gd.data[0].zmin, gd.data[0].zmax]")
    assert zmin == 0 and zmax >= 4  # log10 ranks, up to the worst (past 1,000), not p(target)'s range of 1
    last, top5 = (lab.page.evaluate(_CELL, [heatmap.element_handle(), layer, 4]) for layer in (30, 29))
    assert last == 0 and 0 < top5 <= 0.7  # log10 of the rank of ' Paris' after 'is': 1 at layer 30, <= 5 at 29
    lab.shot("lens-rank", lens)

    compare = lab.views("Compare").first
    compare.scroll_into_view_if_needed()
    compare.locator(".lm-TabBar-tab", has_text="patching").click()
    bars = lab.plot_titled(compare, "Patching the reference into the candidate")
    compare.get_by_text("block 1 attention is the first point").wait_for(state="visible", timeout=15_000)
    shares = dict(zip(*(lab.traces(bars)[0][axis] for axis in ("x", "y"))))
    assert float(shares["block 1 attention"]) == 1.0 and float(shares["block 0 output"]) == 0.0
    rows = {r[0]: r[1:] for r in compare.locator("table.wb").last.evaluate(_ROWS)[1:]}  # point -> module, gap, closed
    assert rows["block 1 attention"][0] == "layers.1.attn" and rows["block 1 attention"][2] == "100.0%"
    assert rows["block 0 output"][2] == "0.0%"
    lab.shot("compare-patching", compare)
    assert lab.problems() == []
