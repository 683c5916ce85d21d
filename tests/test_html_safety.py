"""HTML is safe by construction (issue 17): every string field of every record, poisoned with script and
attribute-breaking payloads, comes out escaped in every widget, the report page and the doctor table;
and every piece of HTML in the package goes through `workbench.safehtml`."""

from __future__ import annotations

import ast
import dataclasses
import typing
from html.parser import HTMLParser
from pathlib import Path

import ipywidgets as W
import pytest
import torch
import torch.nn.functional as F

import workbench as wb
from workbench.capture import records as capture_records
from workbench.capture import trace
from workbench.capture.gradients import GradientHistory
from workbench.doctor.report import Finding, Report
from workbench.generation.records import StepRecord
from workbench.io.report import LoadReport
from workbench.viz import generation as vgen
from workbench.viz.export import write_html
from workbench.widgets import AttentionView, GradientFlow, LayerInspector, MemoryPanel
from workbench.widgets.base import SafeHTML, header, notice

PAYLOADS = ["<script>alert(1)</script>", '" onmouseover="x', "'><img src=x onerror=y>"]
PACKAGE = Path(wb.__file__).resolve().parent


# --- what "no unescaped payload" means --------------------------------------------------------------
class _Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attrs: list[str] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append(tag)
        self.attrs += [name for name, _ in attrs]
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts.append(data.strip())


def assert_safe(page: str, payload: str) -> None:
    """The payload appears only escaped: not verbatim, no <img>, no on* attribute, no injected script."""
    assert payload not in page
    parsed = _Elements()
    parsed.feed(page)
    assert "img" not in parsed.tags
    assert not [a for a in parsed.attrs if a.startswith("on")], "an event-handler attribute was injected"
    assert "alert(1)" not in parsed.scripts


def widget_html(view: W.Widget) -> list[str]:
    """Every HTML value in a widget tree; each HTML widget must be a SafeHTML."""
    out, stack = [], [view]
    while stack:
        w = stack.pop()
        if isinstance(w, W.HTML):
            assert isinstance(w, SafeHTML), f"{type(w).__name__} is an HTML widget outside workbench.safehtml"
            out.append(w.value)
        stack.extend(getattr(w, "children", ()))
    return out


# --- poisoning every string field by introspection ------------------------------------------------------
def _is_str_field(f: dataclasses.Field, owner: type) -> str | None:
    """"str" for a str field, "seq" for a sequence of str, None otherwise (from the resolved hints)."""
    hint = typing.get_type_hints(owner)[f.name]
    args = typing.get_args(hint)
    if hint is str or (type(None) in args and str in args):
        return "str"
    if typing.get_origin(hint) in (list, tuple) and args and args[0] is str:
        return "seq"
    return None


def poison(obj: object, payload: str, seen: set[int] | None = None) -> int:
    """Set every str field of `obj` and of the dataclasses it holds to the payload; returns how many."""
    seen = set() if seen is None else seen
    if id(obj) in seen or not dataclasses.is_dataclass(obj):
        return 0
    seen.add(id(obj))
    count = 0
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        kind = _is_str_field(f, type(obj))
        if kind == "str":
            object.__setattr__(obj, f.name, f"{payload}{count}")
            count += 1
        elif kind == "seq" and value:
            object.__setattr__(obj, f.name, type(value)(f"{payload}{i}" for i in range(len(value))))
            count += 1
        elif isinstance(value, list):
            count += sum(poison(v, payload, seen) for v in value)
        else:
            count += poison(value, payload, seen)
    return count


def test_every_record_type_is_covered_by_the_introspection():
    """A new string field on any record type is poisoned automatically; this pins which types are."""
    types = [c for _, c in vars(capture_records).items() if isinstance(c, type) and dataclasses.is_dataclass(c)]
    names = {c.__name__ for c in types}
    assert {"ModuleRecord", "TensorMeta", "AttentionRecord", "ParamGradRecord"} <= names
    fields = {(c.__name__, f.name) for c in [*types, StepRecord, Finding] for f in dataclasses.fields(c)
              if _is_str_field(f, c)}
    assert {("ModuleRecord", "name"), ("ModuleRecord", "type"), ("TensorMeta", "path"), ("AttentionRecord", "module"),
            ("ParamGradRecord", "module"), ("StepRecord", "token_text"), ("StepRecord", "candidate_texts"),
            ("Finding", "summary"), ("Finding", "fix")} <= fields


@pytest.fixture(scope="module")
def model() -> wb.TransformerLM:
    torch.manual_seed(0)
    return wb.TransformerLM(wb.ModelConfig.preset("tiny").replace(init_std=2.0)).eval()


def _poisoned_trace(model: wb.TransformerLM, payload: str):
    ids = torch.randint(0, 256, (1, 6), generator=torch.Generator().manual_seed(0))
    with trace(model, attention=True, memory=True, gradients=True, samples=32) as tr:
        F.cross_entropy(model(ids)[0, :-1], ids[0, 1:]).backward()
    model.zero_grad(set_to_none=True)
    n = sum(poison(r, payload) for r in [*tr.records, *tr.attention, *tr.gradients])
    assert n > 3 * len(tr.records)  # name, type and tensor paths of every record at least
    tr.meta["model"], tr.meta["device"], tr.meta["dtype"] = payload, payload, payload
    return tr


@pytest.mark.parametrize("payload", PAYLOADS)
def test_trace_widgets_and_report_escape_every_string_field(model, payload, tmp_path):
    tr = _poisoned_trace(model, payload)
    tokens = [f"{payload}{i}" for i in range(6)]
    history = GradientHistory(vanishing=1e8, exploding=1e9)  # every module flagged: names in the flag list
    history.append(tr)
    inspector = LayerInspector(tr)
    views = [inspector, AttentionView(tr, tokens), GradientFlow(history), MemoryPanel(tr, model=model),
             notice(payload), header(payload, payload)]
    pages = []
    for r in tr.records[:8]:
        inspector.select(r.index)
        pages += widget_html(inspector)
        assert payload[:8] in inspector.detail.value or "&" in inspector.detail.value  # the text is there, escaped
    for i, view in enumerate(views):
        pages += widget_html(view)
        if hasattr(view, "save_html"):
            pages.append(view.save_html(tmp_path / f"view{i}.html").read_text())
    pages.append(tr.report_html(tmp_path / "report.html", tokens=tokens).read_text())
    assert any("&lt;" in p or "&#34;" in p or "&#39;" in p for p in pages)  # escaped text did reach the HTML
    for page in pages:
        assert_safe(page, payload)


@pytest.mark.parametrize("payload", PAYLOADS)
def test_generation_steps_escape_every_string_field(payload, tmp_path):
    step = StepRecord(step=0, token_id=3, token_text="x", position=4, token_prob=0.5, candidate_ids=(3, 4),
                      candidate_texts=("a", "b"), candidate_probs=(0.5, 0.2), entropy=1.0, cache_length=5,
                      cache_bytes_used=(10, 10), cache_bytes_allocated=(20, 20), step_time=0.01, finish_reason="eos")
    assert poison(step, payload) >= 3
    text = vgen.text_html([f"{payload}\n", step.token_text], 1, probs=[step.token_prob])
    page = write_html(tmp_path / "steps.html", payload,
                      [text, vgen.topk_bars(step), vgen.cache_layer_bars(step), str(step.finish_reason)]).read_text()
    for html in (text, page):
        assert_safe(html, payload)


@pytest.mark.parametrize("payload", PAYLOADS)
def test_doctor_and_load_reports_escape_every_string_field(payload):
    findings = []
    for status in ("pass", "warn", "fail", "n/a"):
        f = Finding(check="c", status=status, summary="s", evidence={payload: payload, "n": 1.5}, pitfall="p", fix="f")
        poison(f, payload)
        object.__setattr__(f, "status", status)  # the status is validated, not free text
        findings.append(f)
    page = Report(findings, model=payload)._repr_html_()
    assert page.count("&lt;") + page.count("&#34;") + page.count("&#39;") >= 4
    assert_safe(page, payload)
    load = LoadReport(missing=[payload], unexpected=[payload], notes=[payload])
    assert_safe(load._repr_html_(), payload)


def test_a_plain_string_at_a_sink_is_shown_as_text(tmp_path):
    box = SafeHTML("<b>bold?</b>")
    assert box.value == "&lt;b&gt;bold?&lt;/b&gt;"
    box.value = "<i>x</i>"
    assert "<i>" not in box.value
    page = write_html(tmp_path / "p.html", "<t>", ["<script>alert(1)</script>"]).read_text()
    assert_safe(page, "<script>alert(1)</script>")


# --- one path: a static check of the package -------------------------------------------------------------
def _module_constants(tree: ast.Module) -> set[str]:
    return {t.id for node in tree.body if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str) for t in node.targets if isinstance(t, ast.Name)}


def test_every_html_template_in_the_package_is_a_literal_and_markup_is_made_in_one_place():
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        tree = ast.parse(path.read_text())
        constants = _module_constants(tree)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and rel != "safehtml.py":
                names = [a.name for a in node.names]
                module = getattr(node, "module", None) or ""
                if "markupsafe" in names or module.startswith("markupsafe") or "html" in names and module == "":
                    problems.append(f"{rel}:{node.lineno} imports markupsafe or the stdlib html module")
            if not isinstance(node, ast.Call):
                continue
            fn = node.func.id if isinstance(node.func, ast.Name) else node.func.attr \
                if isinstance(node.func, ast.Attribute) else ""
            if fn == "Markup" and rel != "safehtml.py":
                problems.append(f"{rel}:{node.lineno} builds Markup outside workbench.safehtml")
            called_by_name = isinstance(node.func, ast.Name)  # html(...), join(...) imported from safehtml
            if called_by_name and fn in ("html", "static", "join") and rel != "safehtml.py" and node.args:
                first = node.args[0]
                literal = isinstance(first, ast.Constant) and isinstance(first.value, str)
                if not literal and not (isinstance(first, ast.Name) and first.id in constants):
                    problems.append(f"{rel}:{node.lineno} {fn}() with a template that is not a literal")
            if rel.startswith("widgets/") and fn == "HTML":
                problems.append(f"{rel}:{node.lineno} uses W.HTML; use widgets.base.SafeHTML")
    assert problems == []
