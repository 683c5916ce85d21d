"""Standalone HTML and PNG export: plotly.js is inlined once, so files open offline with no CDN."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from ..display import EXPORT, export_html
from ..errors import InputError
from ..safehtml import Markup, html, join, plotly_div, text

PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: Inter, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif; margin: 24px auto;
       max-width: 1200px; color: #222; }}
h1 {{ font-size: 22px; margin-bottom: 4px; }} h2 {{ font-size: 17px; margin-top: 28px; }}
.wb-note {{ color: #666; font-size: 13px; }}
table.wb {{ border-collapse: collapse; font-size: 12px; font-family: ui-monospace, Menlo, monospace; }}
table.wb th, table.wb td {{ padding: 2px 8px; border-bottom: 1px solid #eee; text-align: right; }}
table.wb th {{ background: #f6f6f6; position: sticky; top: 0; }}
table.wb td:first-child, table.wb th:first-child {{ text-align: left; }}
</style></head>
<body>
<h1>{title}</h1>
{body}
</body></html>
"""


def figure_div(fig: go.Figure, *, first: bool) -> Markup:
    """One figure as a <div>; the first one on a page carries the whole plotly.js bundle inline."""
    return plotly_div(fig, include_plotlyjs=first)


def write_html(path: str | Path, title: str, parts: Sequence[str | go.Figure | Any]) -> Path:
    """Write a standalone page: `parts` are HTML (`workbench.safehtml` Markup), plain strings (escaped:
    shown as text) and plotly figures (FigureWidgets included)."""
    path = Path(path)
    if path.suffix.lower() not in (".html", ".htm"):
        raise InputError(f"save_html writes an HTML page; give a path ending in .html, not {path.name!r}.")
    chunks, first = [], True
    for part in parts:
        if isinstance(part, str):
            chunks.append(text(part))  # Markup passes as is; any other string is shown as text
        else:
            chunks.append(figure_div(go.Figure(part), first=first))
            first = False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html(PAGE, title=title, body=join("\n", chunks)), encoding="utf-8")
    return path


def save_html(figures: go.Figure | Sequence[go.Figure] | Any, path: str | Path, *, title: str = "workbench") -> Path:
    """Write one or more figures to a standalone offline HTML file (plotly.js inline); a record with a registered
    export view (a `LogitLens`, a `Comparison`, a `Trace`) is written by its view (`workbench.display`)."""
    if not isinstance(figures, (go.Figure, Sequence)) and EXPORT.lookup(type(figures)) is not None:
        return export_html(figures, path)
    figs = [figures] if isinstance(figures, go.Figure) else list(figures)
    return write_html(path, title, figs)


def save_png(fig: Any, path: str | Path, *, dpi: int = 150) -> Path:
    """Save a matplotlib figure (the static variants in workbench.viz) as PNG."""
    path = Path(path)
    if not hasattr(fig, "savefig"):
        raise InputError("PNG export takes a matplotlib Figure (the *_mpl functions in workbench.viz); "
                         "plotly static export would need kaleido, which is not installed.")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path
