"""Every record type with an HTML view shows through `workbench.display`: its `_repr_html_` and its export
ask the registry (a spy registered for the type is called with the record), the views registered by
`workbench.views` escape what they show, and `import workbench` registers them without loading plotly."""

from __future__ import annotations

import ast
import copy
import importlib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

import workbench as wb
from workbench import views
from workbench.capture import Trace, trace
from workbench.compare import Comparison, compare
from workbench.display import EXPORT, NOTEBOOK
from workbench.doctor.report import Finding, Report
from workbench.interventions import LogitLens, logit_lens
from workbench.interventions.record import PatchingResult
from workbench.io.report import LoadReport
from workbench.safehtml import Markup, html

PAYLOAD = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
PACKAGE = Path(wb.__file__).resolve().parent


@pytest.fixture(scope="module")
def records() -> dict[str, object]:
    """One record of each type with an HTML view, each carrying PAYLOAD in a name its view shows."""
    torch.manual_seed(0)
    net = nn.Sequential()
    net.add_module(PAYLOAD, nn.Linear(4, 4))  # a module name in the trace report's module table
    with trace(net) as tr:
        net(torch.randn(2, 4))
    ref = wb.TransformerLM(wb.ModelConfig.preset("tiny")).eval()
    cand = copy.deepcopy(ref)
    cand.add_module(PAYLOAD, nn.Linear(2, 2))  # an unmatched weight in the comparison's weight table
    finding = Finding(PAYLOAD, "fail", "future leaks", {"max_abs_delta": 0.5}, "mask shifted", "use tril")
    lens = logit_lens(ref, [3, 1, 4], tokenizer=_PayloadTokens(), top_k=2)  # every token's text is PAYLOAD
    patching = PatchingResult(site="resid", layers=[0], layer_names=[PAYLOAD], columns=[0], column_labels=[PAYLOAD],
                              values=[[0.5]], clean=1.0, corrupted=0.0, notes=[PAYLOAD])
    return {"trace": tr, "comparison": compare(ref, cand), "doctor report": Report([finding], model="M"),
            "load report": LoadReport(source="w.safetensors", format="safetensors", missing=[PAYLOAD]),
            "logit lens": lens, "patching": patching}


class _PayloadTokens:
    def encode(self, text: str) -> list[int]:
        return [1]

    def decode(self, ids: list[int]) -> str:
        return PAYLOAD


NOTEBOOK_TYPES = {"comparison": Comparison, "doctor report": Report, "load report": LoadReport,
                  "logit lens": LogitLens, "patching": PatchingResult}
EXPORTS: dict[str, tuple[type, Callable, dict]] = {  # record -> (type, its export convenience, options it passes)
    "trace": (Trace, lambda r, path: r.report_html(path, tokens=["a"], max_layers=1),
              {"tokens": ["a"], "max_layers": 1}),
    "comparison": (Comparison, lambda r, path: r.save_html(path), {}),
    "logit lens": (LogitLens, lambda r, path: r.save_html(path), {}),
}


def test_import_workbench_registers_exactly_these_views():
    assert NOTEBOOK.registered() == {Comparison: views.comparison_block, Report: views.doctor_table,
                                     LoadReport: views.load_table, LogitLens: views.lens_block,
                                     PatchingResult: views.patching_block}
    assert EXPORT.registered() == {Trace: views.trace_page, Comparison: views.comparison_page,
                                   LogitLens: views.lens_page}


@pytest.mark.parametrize("name", NOTEBOOK_TYPES)
def test_notebook_html_asks_the_registry_for_the_records_type(records, name):
    record, calls = records[name], []

    def spy(shown: object) -> Markup:
        calls.append(shown)
        return html("<p>{}</p>", "spy view")

    assert type(record) is NOTEBOOK_TYPES[name]
    registered = NOTEBOOK.lookup(type(record))
    with NOTEBOOK.override(type(record), spy):
        out = record._repr_html_()
    assert out == "<p>spy view</p>" and len(calls) == 1 and calls[0] is record
    assert NOTEBOOK.lookup(type(record)) is registered


@pytest.mark.parametrize("name", EXPORTS)
def test_export_asks_the_registry_for_the_records_type(records, name, tmp_path):
    record, calls = records[name], []
    cls, export, options = EXPORTS[name]

    def spy(shown: object, path: Path, **kw: object) -> Path:
        calls.append((shown, path, kw))
        return Path(path)

    with EXPORT.override(cls, spy):
        out = export(record, tmp_path / "page.html")
    assert out == tmp_path / "page.html" and not out.exists()  # the spy wrote nothing
    assert len(calls) == 1 and calls[0][0] is record and calls[0][1:] == (tmp_path / "page.html", options)
    assert EXPORT.lookup(cls) is {Trace: views.trace_page, Comparison: views.comparison_page,
                                  LogitLens: views.lens_page}[cls]


@pytest.mark.parametrize("name", NOTEBOOK_TYPES)
def test_the_registered_notebook_views_escape_names(records, name):
    page = records[name]._repr_html_()
    assert PAYLOAD not in page and ESCAPED in page
    assert "<table" in page or "Plotly.newPlot" in page  # the view itself, not the text fallback
    assert "No HTML view is registered" not in page


@pytest.mark.parametrize("name", EXPORTS)
def test_the_registered_exports_escape_names(records, name, tmp_path):
    _, export, _ = EXPORTS[name]
    page = export(records[name], tmp_path / "page.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "plotly" in page
    assert PAYLOAD not in page and ESCAPED in page


def test_a_subclass_of_a_record_shows_with_its_bases_view(records):
    class AnnotatedReport(Report):
        pass

    report = records["doctor report"]
    sub = AnnotatedReport(report.findings, model=report.model)
    assert sub._repr_html_() == report._repr_html_() and "<table>" in sub._repr_html_()
    with NOTEBOOK.override(AnnotatedReport, lambda r: html("<p>{}</p>", "own view")):
        assert sub._repr_html_() == "<p>own view</p>"  # its own registration wins over the base's
        assert "<table>" in report._repr_html_()


def test_every_repr_html_in_the_package_asks_the_registry_and_has_a_view():
    """No record builds its own HTML: each `_repr_html_` returns notebook_html(self), and its type has a view."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ClassDef):
                continue
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "_repr_html_":
                    module = "workbench." + path.relative_to(PACKAGE).with_suffix("").as_posix().replace("/", ".")
                    found.append((module, node.name, ast.unparse(item.body[-1])))
    assert {(m, c) for m, c, _ in found} == {("workbench.compare.comparison", "Comparison"),
                                            ("workbench.doctor.report", "Report"),
                                            ("workbench.io.report", "LoadReport"),
                                            ("workbench.interventions.lens", "LogitLens"),
                                            ("workbench.interventions.record", "PatchingResult")}
    for module, cls, body in found:
        assert body == "return notebook_html(self)", f"{module}.{cls}._repr_html_ builds HTML itself"
        assert NOTEBOOK.lookup(getattr(importlib.import_module(module), cls)) is not None


def test_importing_one_subpackage_registers_the_views_and_plotly_loads_on_first_display():
    code = """
import sys
import workbench.io.report
from workbench.display import EXPORT, NOTEBOOK
print(sorted(c.__name__ for c in NOTEBOOK.registered()), sorted(c.__name__ for c in EXPORT.registered()))
print("plotly" in sys.modules)
page = workbench.io.report.LoadReport(source="w", missing=["<k>"])._repr_html_()
print("<td><code>&lt;k&gt;</code></td>" in page, "plotly" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines() == ["['Comparison', 'LoadReport', 'LogitLens', 'PatchingResult', 'Report'] "
                                       "['Comparison', 'LogitLens', 'Trace']", "False",
                                       "True True"]
