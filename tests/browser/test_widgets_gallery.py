"""notebooks/widgets_gallery.ipynb in a real JupyterLab: every widget renders its plots and controls with no
error output, the attention view follows its Layer selector, and the stepper's Step button adds one token
and one KV-cache point. Screenshots of every step go to artifacts/browser/.

Views are found by their header title (`.wb-view` whose first child holds `.wb-title`), controls by their
ipywidgets `description` label, plots by their plotly title: the names a user reads on screen.
"""

from __future__ import annotations

import re

import pytest
from labdriver import LabDriver

GALLERY = "notebooks/widgets_gallery.ipynb"
VIEWS = ("Layer inspector", "Attention", "Gradient flow", "Memory", "Generation stepper")


@pytest.fixture(scope="module")
def gallery(lab_server, chromium, artifacts_dir):
    """The gallery opened and run once for this module (the tests below run in file order on it)."""
    lab = LabDriver(chromium.new_page(), lab_server, artifacts_dir, prefix="gallery")
    try:
        lab.open(GALLERY)
        lab.run_all(timeout_s=240)
        lab.wait_rendered(".js-plotly-plot", len(VIEWS))
        lab.wait_idle(timeout_s=30)
        yield lab
    finally:
        lab.close()


def _sized_plots(view) -> int:
    """Plots in `view` that plotly laid out with a real size (a message figure may hold no trace)."""
    return view.evaluate("""(el) => Array.from(el.querySelectorAll('.js-plotly-plot')).filter(gd => {
        const r = gd.getBoundingClientRect(); return r.width > 50 && r.height > 50 && gd._fullLayout;
    }).length""")


def _clipped(view) -> list[str]:
    """What a user would see cut off: plots reaching past the view's right edge or past a clipping
    ancestor, and table rows wider than their list box."""
    return view.evaluate("""(el) => {
        const out = [], right = el.getBoundingClientRect().right + 1;
        for (const gd of el.querySelectorAll('.js-plotly-plot')) {
            const r = gd.getBoundingClientRect(), name = String((gd.layout && gd.layout.title &&
                gd.layout.title.text) || 'untitled plot');
            if (r.width < 1) continue;  // in a hidden tab
            if (r.right > right) out.push(`${name}: right edge ${r.right.toFixed(0)} > view ${right.toFixed(0)}`);
            for (let p = gd.parentElement; p && p !== el; p = p.parentElement) {
                const s = getComputedStyle(p), b = p.getBoundingClientRect();
                if ((s.overflowX === 'hidden' || s.overflow === 'hidden') && r.right > b.right + 1) {
                    out.push(`${name}: clipped by a box ${b.width.toFixed(0)} px wide`); break; }
            }
        }
        for (const sel of el.querySelectorAll('.wb-table select')) {
            if (sel.getBoundingClientRect().width > 0 && sel.scrollWidth > sel.clientWidth + 1)
                out.push(`table rows ${sel.scrollWidth} px wide in a ${sel.clientWidth} px list`);
        }
        return out;
    }""")


def test_gallery_renders_every_widget(gallery):
    lab = gallery
    assert lab.unexecuted_cells() == [], "Run All left cells unexecuted"
    problems = lab.problems()
    assert problems == [], "\n".join(problems)
    lab.shot("page")
    for title in VIEWS:
        view = lab.views(title).first
        assert view.count() == 1, f"no view titled {title!r} in the gallery"
        view.scroll_into_view_if_needed()
        assert _sized_plots(view) >= 1, f"{title}: no rendered plotly plot"
        assert _clipped(view) == [], f"{title}: {_clipped(view)}"
        lab.shot(f"view-{title.replace(' ', '_')}", view)

    inspector = lab.views("Layer inspector").first
    assert inspector.locator(".widget-text input").count() >= 1  # the filter box
    assert lab.control(inspector, "dropdown", "Sort").count() == 1
    rows = inspector.locator(".wb-table select option")
    assert rows.count() > 1

    attention = lab.views("Attention").first
    for label in ("Layer", "Head", "Metric"):
        assert lab.control(attention, "dropdown", label).count() == 1, f"attention view lacks {label}"
    assert lab.control(lab.views("Gradient flow").first, "slider", "Step").count() == 1

    stepper = lab.views("Generation stepper").first
    for label in ("Step", "Run N", "Reset"):
        assert lab.control(stepper, "button", label).count() == 1, f"stepper lacks the {label} button"
    assert stepper.locator("textarea").count() == 1


def test_inspector_row_opens_detail(gallery):
    lab = gallery
    inspector = lab.views("Layer inspector").first
    table = inspector.locator(".wb-table select")
    label = table.locator("option").nth(1).inner_text()
    table.select_option(index=1)
    name = label.split()[0]
    lab.page.wait_for_function(
        "([el, name]) => !el.innerText.includes('Select a row') && el.innerText.includes(name)",
        arg=[inspector.element_handle(), name], timeout=15_000)
    histogram = inspector.locator(".js-plotly-plot").first  # the activation histogram of the selected row
    lab.page.wait_for_function(
        "([gd, name]) => (gd.data || []).length > 0 && String(gd.layout.title.text || '').includes(name)",
        arg=[histogram.element_handle(), name], timeout=15_000)
    lab.shot("inspector-row", inspector)
    assert lab.problems() == []


def test_attention_layer_selector_redraws_heatmap(gallery):
    lab = gallery
    view = lab.views("Attention").first
    heatmap = lab.plot_titled(view, r"Layer \d+ ·")
    select = lab.control(view, "dropdown", "Layer").locator("select")
    layers = [o.strip() for o in select.locator("option").all_inner_texts()]
    assert len(layers) >= 2, f"the gallery's attention view has one layer only: {layers}"
    before_title = lab.plot_titles(view)
    before = lab.traces(heatmap)[0]["z"]
    lab.shot("attention-before", view)

    target = layers[-1]
    number = int(re.search(r"\d+", target).group())
    select.select_option(label=target)
    lab.page.wait_for_function(
        "([gd, n]) => String(gd.layout.title.text || '').startsWith(`Layer ${n} `)",
        arg=[heatmap.element_handle(), number], timeout=15_000)
    lab.wait_idle(timeout_s=30)
    after = lab.traces(heatmap)[0]["z"]
    assert after["wsum"] != before["wsum"], "the heatmap title changed but its data did not"
    assert (after["rows"], after["cols"]) == (before["rows"], before["cols"])
    assert lab.plot_titles(view) != before_title
    lab.shot("attention-after", view)
    assert lab.problems() == []


@pytest.mark.parametrize("which", [0, 1], ids=["workbench-model", "transformers-model"])
def test_stepper_step_adds_one_token_and_one_cache_point(gallery, which):
    """The gallery's first stepper drives the workbench model, the second transformers' LlamaForCausalLM."""
    lab = gallery
    view = lab.views("Generation stepper").nth(which)
    tokens = view.locator(".wb-text span")
    step = lab.control(view, "button", "Step")

    def cache_points() -> int:
        growth = lab.plot_titled(view, "KV cache growth")
        return len(lab.traces(growth)[0]["x"] or [])

    n_tokens, n_points = tokens.count(), cache_points()
    assert n_tokens > 0, "the stepper shows no prompt text"
    lab.shot(f"stepper{which}-0", view)
    for k in (1, 2):
        step.click()
        lab.page.wait_for_function("([el, n]) => el.querySelectorAll('.wb-text span').length === n",
                                   arg=[view.element_handle(), n_tokens + k], timeout=30_000)
        lab.wait_idle(timeout_s=30)
        assert tokens.count() == n_tokens + k
        assert cache_points() == n_points + k
        styles = [s or "" for s in view.locator(".wb-text span").evaluate_all("els => els.map(e => e.style.outline)")]
        assert [i for i, s in enumerate(styles) if s] == [n_tokens + k - 1], "only the new token is highlighted"
        lab.shot(f"stepper{which}-{k}", view)
    assert lab.problems() == []


DASHBOARD_TABS = {"Modules": "Layer inspector", "Attention": "Attention", "Memory": "Memory",
                  "Gradients": "Gradient flow", "Logit lens": "Logit lens", "Generate": "Generation stepper"}


def test_dashboard_tabs_each_show_their_view(gallery):
    lab = gallery
    dashboard = lab.views("workbench dashboard").first
    assert dashboard.count() == 1, "the gallery shows no `workbench.show(...)` dashboard"
    dashboard.scroll_into_view_if_needed()
    tabs = dashboard.locator(".lm-TabBar-tab")
    assert [t.strip() for t in tabs.all_inner_texts()] == list(DASHBOARD_TABS)
    for tab, title in DASHBOARD_TABS.items():
        tabs.filter(has_text=tab).click()
        view = lab.views(title, scope=dashboard).first
        view.wait_for(state="visible", timeout=15_000)
        lab.page.wait_for_function(
            """(el) => Array.from(el.querySelectorAll('.js-plotly-plot')).some(gd => {
                const r = gd.getBoundingClientRect(); return r.width > 50 && r.height > 50 && gd._fullLayout; })""",
            arg=view.element_handle(), timeout=15_000)
        lab.shot(f"dashboard-{tab}", dashboard)
        assert _clipped(dashboard) == [], f"dashboard tab {tab}: {_clipped(dashboard)}"
    assert lab.problems() == []
