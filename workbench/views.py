"""Which view shows each record type: the one place where records meet their HTML views.

Every record type with an HTML view is registered here in `workbench.display`: a notebook view (what
`_repr_html_` returns) and, where the record has a page of its own, an export view (what `Trace.report_html`
and `Comparison.save_html` write). `import workbench` calls `register_views()`, and so does any import of a
submodule (`import workbench.capture` runs the package's `__init__` first), so a record displays with its view
whichever part of the workbench was imported.

The views live in `workbench.viz`, whose figures need plotly. `import workbench` must not load plotly (a
training job or a benchmark never draws), so each handler here imports its view when first called: the
registration is made at import, the view is loaded on first display. This module sits above the records and
the views in the layer contract, so both imports point down.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .capture.trace import Trace
from .compare.comparison import Comparison
from .display import EXPORT, NOTEBOOK
from .doctor.report import Report
from .interventions.lens import LogitLens
from .interventions.record import PatchingResult
from .io.report import LoadReport
from .safehtml import Markup


def trace_page(trace: Trace, path: str | Path, **options: Any) -> Path:
    """`workbench.viz.report.report_html`: summary, modules, memory, gradients and attention on one page."""
    from .viz.report import report_html

    return report_html(trace, path, **options)


def comparison_block(comparison: Comparison) -> Markup:
    """`workbench.viz.compare.comparison_html`: verdict, divergence figure, diagnosis and weights."""
    from .viz.compare import comparison_html

    return comparison_html(comparison)


def comparison_page(comparison: Comparison, path: str | Path) -> Path:
    """`workbench.viz.compare.save_comparison`: the same, with the text summary, as one offline page."""
    from .viz.compare import save_comparison

    return save_comparison(comparison, path)


def doctor_table(report: Report) -> Markup:
    """`workbench.viz.doctor.report_table`: one row per finding."""
    from .viz.doctor import report_table

    return report_table(report)


def load_table(report: LoadReport) -> Markup:
    """`workbench.viz.load.load_report_table`: one row per missing, unexpected, mismatched, tied or cast key."""
    from .viz.load import load_report_table

    return load_report_table(report)


def lens_block(lens: LogitLens) -> Markup:
    """`workbench.viz.lens.lens_html`: a summary and the target-probability heatmap."""
    from .viz.lens import lens_html

    return lens_html(lens)


def lens_page(lens: LogitLens, path: str | Path) -> Path:
    """`workbench.viz.lens.save_lens`: the probability, rank and entropy heatmaps on one offline page."""
    from .viz.lens import save_lens

    return save_lens(lens, path)
def patching_block(result: PatchingResult) -> Markup:
    """`workbench.viz.patching.patching_html`: the summary and the layers x positions (or heads) heatmap."""
    from .viz.patching import patching_html

    return patching_html(result)


def register_views() -> None:
    """Register every workbench view (again: this restores any that were replaced with `register`)."""
    EXPORT.register(Trace, trace_page)
    NOTEBOOK.register(Comparison, comparison_block)
    EXPORT.register(Comparison, comparison_page)
    NOTEBOOK.register(Report, doctor_table)
    NOTEBOOK.register(LoadReport, load_table)
    NOTEBOOK.register(LogitLens, lens_block)
    EXPORT.register(LogitLens, lens_page)
    NOTEBOOK.register(PatchingResult, patching_block)

