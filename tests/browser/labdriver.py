"""Drive one JupyterLab page from a test: open a notebook, run it, wait for idle, read outputs and plots.

The server exposes the app as `window.jupyterapp` (LabApp.expose_app_in_browser), so the driver runs
JupyterLab's own commands and reads the notebook model instead of guessing from pixels; what the user sees
is asserted on the DOM (`.js-plotly-plot`, `.jupyter-widgets`, `.widget-*`) and kept as screenshots.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

# JavaScript run in the page. `nb()` is the notebook panel the driver opened.
_NB = "(() => window.jupyterapp.shell.currentWidget)()"

_RUN_ALL = f"""() => {{
  const panel = {_NB};
  window.__wbRun = {{done: false, ok: null, error: null}};
  window.jupyterapp.commands.execute('notebook:run-all-cells').then(
    ok => {{ window.__wbRun = {{done: true, ok, error: null}}; }},
    err => {{ window.__wbRun = {{done: true, ok: false, error: String(err)}}; }});
  return panel.content.widgets.length;
}}"""

_KERNEL_STATUS = f"""() => {{
  const panel = {_NB};
  const kernel = panel && panel.sessionContext && panel.sessionContext.session
    && panel.sessionContext.session.kernel;
  return kernel ? kernel.status : 'none';
}}"""

# Outputs of every code cell as nbformat JSON: [{index, source, outputs:[...]}].
_OUTPUTS = f"""() => {{
  const panel = {_NB};
  return panel.content.widgets.filter(c => c.model.type === 'code').map(c => ({{
    index: panel.content.widgets.indexOf(c),
    source: c.model.sharedModel.getSource().slice(0, 200),
    count: c.model.executionCount,
    outputs: c.model.outputs.toJSON().map(o => ({{
      output_type: o.output_type, name: o.name || null, text: o.text ? [].concat(o.text).join('') : null,
      ename: o.ename || null, evalue: o.evalue || null,
      traceback: o.traceback ? o.traceback.join('\\n') : null,
    }})),
  }}));
}}"""

# A compact, comparable view of one plotly plot's traces (the z/y data reduced to shape + checksum).
PLOT_TRACES = """(el) => {
  const stats = (arr) => {
    if (!arr) return null;
    const flat = [];
    const walk = (a) => { for (const v of a) { if (Array.isArray(v) || ArrayBuffer.isView(v)) walk(v);
                                                else flat.push(Number(v)); } };
    walk(arr);
    let sum = 0, wsum = 0;
    flat.forEach((v, i) => { if (Number.isFinite(v)) { sum += v; wsum += v * ((i % 97) + 1); } });
    const rows = arr.length, cols = (arr[0] && arr[0].length !== undefined) ? arr[0].length : null;
    return {rows, cols, n: flat.length, sum, wsum};
  };
  return (el.data || []).map(t => ({
    type: t.type || 'scatter', name: t.name === undefined ? null : String(t.name),
    x: t.x ? Array.from(t.x).slice(0, 300).map(String) : null,
    y: t.y ? Array.from(t.y).slice(0, 300).map(String) : null,
    z: stats(t.z), ystats: stats(t.y), xstats: stats(t.x),
  }));
}"""


class LabDriver:
    """One browser page on the test JupyterLab."""

    def __init__(self, page, server, artifacts: Path, prefix: str) -> None:
        self.page = page
        self.server = server
        self.artifacts = artifacts
        self.prefix = re.sub(r"[^A-Za-z0-9_.-]+", "_", prefix)
        self.notebook: str | None = None
        self.page_errors: list[str] = []
        self.console_errors: list[str] = []
        page.on("pageerror", lambda err: self.page_errors.append(str(err)))
        page.on("console", lambda msg: msg.type == "error" and self.console_errors.append(msg.text))

    # --- opening and running -------------------------------------------------------------------------
    def open(self, notebook: str, timeout_s: float = 60.0) -> None:
        """Open `notebook` (a path relative to the repository root) and wait for its kernel to be idle."""
        self.notebook = notebook
        self.page.goto(self.server.url(f"lab/tree/{notebook}?reset"))  # reset: no tabs restored
        self.page.wait_for_function(
            "() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
            " && window.jupyterapp.shell.currentWidget.content"
            " && window.jupyterapp.shell.currentWidget.content.widgets.length > 0",
            timeout=timeout_s * 1000,
        )
        self.wait_idle(timeout_s)

    def run_all(self, timeout_s: float = 120.0) -> None:
        """Run every cell with JupyterLab's Run All command and wait until the kernel is idle again."""
        self.page.evaluate(_RUN_ALL)
        self.page.wait_for_function("() => window.__wbRun && window.__wbRun.done", timeout=timeout_s * 1000)
        state = self.page.evaluate("() => window.__wbRun")
        assert state["error"] is None, f"Run All failed in the browser: {state['error']}"
        self.wait_idle(timeout_s)

    def kernel_status(self) -> str:
        return self.page.evaluate(_KERNEL_STATUS)

    def wait_idle(self, timeout_s: float = 60.0, settle_s: float = 0.5) -> None:
        """Wait until the kernel reports idle and no prompt shows [*], held for `settle_s` seconds."""
        deadline = time.monotonic() + timeout_s
        idle_since = None
        while time.monotonic() < deadline:
            busy = self.kernel_status() != "idle" or self.page.locator(
                ".jp-InputArea-prompt:has-text('[*]')").count() > 0
            if busy:
                idle_since = None
            elif idle_since is None:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since >= settle_s:
                return
            time.sleep(0.1)
        raise AssertionError(f"kernel still busy after {timeout_s:.0f}s (status {self.kernel_status()!r})")

    # --- reading what the notebook produced ----------------------------------------------------------
    def cell_outputs(self) -> list[dict]:
        """Every code cell: index, first 200 characters of source, execution count and its outputs."""
        return self.page.evaluate(_OUTPUTS)

    def problems(self) -> list[str]:
        """Errors a user would see: error outputs, tracebacks in any text, widgets that failed to render."""
        found = []
        for cell in self.cell_outputs():
            for out in cell["outputs"]:
                text = " ".join(filter(None, [out["text"], out["traceback"]]))
                if out["output_type"] == "error":
                    found.append(f"cell {cell['index']}: {out['ename']}: {out['evalue']}\n{out['traceback']}")
                elif "Traceback (most recent call last)" in text or (
                        out["name"] == "stderr" and re.search(r"\w+(Error|Exception): ", text)):
                    found.append(f"cell {cell['index']} {out['name'] or out['output_type']}: {text[:2000]}")
        dom = self.page.evaluate("""() => Array.from(document.querySelectorAll(
            '.widget-error, .jp-RenderedText[data-mime-type="application/vnd.jupyter.error"]'))
            .map(e => e.innerText.slice(0, 500))""")
        found += [f"rendered error: {t}" for t in dom]
        if self.page.get_by_text("Error displaying widget").count():
            found.append("a widget failed to display ('Error displaying widget')")
        found += [f"uncaught page error: {e}" for e in self.page_errors]
        return found

    def stderr_text(self) -> str:
        """All stderr stream output (warnings, progress bars), for messages."""
        return "\n".join(o["text"] or "" for c in self.cell_outputs() for o in c["outputs"]
                         if o["output_type"] == "stream" and o["name"] == "stderr")

    def unexecuted_cells(self) -> list[int]:
        """Indices of code cells with source that have no execution count (did not run)."""
        return [c["index"] for c in self.cell_outputs() if c["count"] is None and c["source"].strip()]

    # --- plots ----------------------------------------------------------------------------------------
    def plots(self):
        return self.page.locator(".js-plotly-plot")

    def traces(self, plot) -> list[dict]:
        """A comparable summary of one plotly plot's traces (see PLOT_TRACES)."""
        return plot.evaluate(PLOT_TRACES)

    def plot_titles(self, scope) -> list[str]:
        """Titles of the plotly plots inside `scope` (a locator), in DOM order."""
        return scope.evaluate("""(el) => Array.from(el.querySelectorAll('.js-plotly-plot')).map(
            gd => String((gd.layout && gd.layout.title && gd.layout.title.text) || ''))""")

    def plot_titled(self, scope, pattern: str):
        """The plot inside `scope` whose title matches the regex `pattern` at its start (exactly one must)."""
        titles = self.plot_titles(scope)
        hits = [i for i, t in enumerate(titles) if re.match(pattern, t)]
        assert len(hits) == 1, f"expected one plot titled {pattern!r}, got titles {titles}"
        return scope.locator(".js-plotly-plot").nth(hits[0])

    def wait_rendered(self, selector: str = ".js-plotly-plot", at_least: int = 1, timeout_s: float = 30.0):
        """Wait until at least `at_least` elements match `selector`; return their locator."""
        self.page.wait_for_function(
            "([sel, n]) => document.querySelectorAll(sel).length >= n", arg=[selector, at_least],
            timeout=timeout_s * 1000)
        return self.page.locator(selector)

    # --- workbench views and their controls -----------------------------------------------------------
    def views(self, title: str, scope=None):
        """Every workbench view (`.wb-view`) whose own header (first child) starts with `title`,
        in the page or inside `scope` (a locator)."""
        root = "xpath=.//" if scope is not None else "xpath=//"
        return (scope or self.page).locator(
            f"{root}div[contains(concat(' ', normalize-space(@class), ' '), ' wb-view ')]"
            f"[./*[1]//*[contains(@class, 'wb-title')][starts-with(normalize-space(.), '{title}')]]")

    @staticmethod
    def control(scope, kind: str, label: str):
        """The ipywidgets control of `kind` ('dropdown', 'button', ...) labelled `label` inside `scope`."""
        if kind == "button":
            return scope.locator("button.jupyter-button").filter(has_text=re.compile(rf"^\s*{re.escape(label)}\s*$"))
        box = scope.locator(f".widget-{kind}").filter(
            has=scope.page.locator("label.widget-label", has_text=re.compile(rf"^\s*{re.escape(label)}\s*$")))
        return box

    # --- screenshots ----------------------------------------------------------------------------------
    def shot(self, name: str, target=None) -> Path:
        """Screenshot the page (or one element, whole) into artifacts/browser/.

        The notebook scrolls inside a fixed-height panel, so an element taller than the window would be
        cut; the window is made tall enough for it while the picture is taken."""
        path = self.artifacts / f"{self.prefix}.{name}.png"
        if target is None:
            self.page.screenshot(path=str(path))
            return path
        size = self.page.viewport_size
        box = target.bounding_box()
        if box and box["height"] + 300 > size["height"]:
            self.page.set_viewport_size({"width": size["width"], "height": int(box["height"]) + 300})
        try:
            target.scroll_into_view_if_needed()
            self.page.wait_for_timeout(300)  # let lab relayout and plotly resize
            target.screenshot(path=str(path))
        finally:
            self.page.set_viewport_size(size)
        return path

    def shot_outputs(self, name: str) -> list[Path]:
        """One screenshot per code cell that has output."""
        paths = []
        cells = self.page.locator(".jp-Notebook .jp-CodeCell")
        for i in range(cells.count()):
            cell = cells.nth(i)
            if cell.locator(".jp-OutputArea-output").count():
                paths.append(self.shot(f"{name}.cell{i:02d}", cell))
        return paths

    # --- teardown -------------------------------------------------------------------------------------
    def close(self) -> None:
        """Shut down the notebook's kernel session through the REST API, then close the page."""
        try:
            if self.notebook:
                for session in self.server.api("api/sessions") or []:
                    if session.get("path") == self.notebook:
                        self.server.api(f"api/sessions/{session['id']}", method="DELETE")
        finally:
            self.page.close()
