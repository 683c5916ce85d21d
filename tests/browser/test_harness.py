"""Harness self-test: a plain ipywidgets + plotly FigureWidget notebook, run and driven in the browser.

If this fails, the browser set-up (server, kernel, widget manager, plotly renderer) is broken, not the
workbench widgets.
"""

from __future__ import annotations

SMOKE = "tests/browser/fixtures/smoke.ipynb"
XS = list(range(6))


def _plot_y(lab) -> list[float]:
    return [float(v) for v in lab.traces(lab.plots().first)[0]["y"]]


def _wait_plot_y(lab, expected: list[float], timeout_ms: int = 15_000) -> None:
    lab.page.wait_for_function(
        "(want) => { const el = document.querySelector('.js-plotly-plot');"
        " return el && el.data && el.data[0] && Array.from(el.data[0].y).map(Number).join() === want.join(); }",
        arg=expected, timeout=timeout_ms)


def test_smoke_notebook_renders_and_reacts(lab):
    lab.open(SMOKE)
    lab.run_all(timeout_s=90)
    assert lab.unexecuted_cells() == [], "Run All left cells unexecuted"
    plots = lab.wait_rendered(".js-plotly-plot", 1)
    lab.wait_rendered(".wb-smoke-power.widget-slider", 1)
    assert plots.count() == 1
    assert lab.page.locator(".jupyter-widgets").count() >= 3
    assert lab.page.locator(".wb-smoke-flip").is_visible()
    assert lab.problems() == []
    assert _plot_y(lab) == [float(x) for x in XS]
    lab.shot("1-rendered")

    # keyboard on the slider handle: power 1 -> 2, the kernel redraws the figure with squares
    handle = lab.page.locator(".wb-smoke-power .noUi-handle")
    handle.click()
    handle.press("ArrowRight")
    _wait_plot_y(lab, [float(x**2) for x in XS])
    assert lab.page.locator(".wb-smoke-power .widget-readout").inner_text().strip() == "2"
    lab.shot("2-slider")

    # the button round-trips through the kernel: the label counts and the curve flips sign
    lab.page.locator(".wb-smoke-flip").click()
    lab.page.wait_for_function(
        "() => (document.querySelector('.wb-smoke-status') || {}).innerText === 'flips: 1'", timeout=15_000)
    _wait_plot_y(lab, [float(-(x**2)) for x in XS])
    lab.shot("3-button")
    lab.wait_idle()
    assert lab.problems() == []


def test_error_output_is_reported(lab, artifacts_dir):
    """The error collector must see a traceback: a notebook cell that raises is reported with its name."""
    import nbformat

    folder = artifacts_dir / "nb"  # under the server's root, git-ignored
    folder.mkdir(parents=True, exist_ok=True)
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell("raise ValueError('wb-boom')")]
    path = folder / "raises.ipynb"
    nbformat.write(nb, path)
    lab.open(path.relative_to(lab.server.root).as_posix())
    lab.run_all(timeout_s=60)
    problems = lab.problems()
    assert any("ValueError: wb-boom" in p for p in problems), problems
    lab.shot("error")
