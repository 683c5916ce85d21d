"""The package surface: `import workbench` and its core stay free of the notebook stack until asked."""

from __future__ import annotations

import subprocess
import sys

import workbench


def test_core_imports_without_plotly_or_ipywidgets_and_widgets_load_on_use():
    code = """
import sys
import workbench as wb
import workbench.capture, workbench.doctor, workbench.generation, workbench.models, workbench.io.load
heavy = [m for m in ("plotly", "ipywidgets", "anywidget", "matplotlib") if m in sys.modules]
assert heavy == [], heavy
model = wb.TransformerLM(wb.ModelConfig.preset("tiny"))
with wb.trace(model) as tr:
    model(__import__("torch").tensor([[1, 2, 3]]))
assert tr.records and "plotly" not in sys.modules
assert wb.AttentionView.__module__ == "workbench.widgets.attention"
assert wb.viz.__name__ == "workbench.viz" and "plotly" in sys.modules
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok"


def test_every_public_name_resolves():
    missing = [name for name in workbench.__all__ if getattr(workbench, name, None) is None]
    assert missing == []
    assert set(workbench.__all__) <= set(dir(workbench))
