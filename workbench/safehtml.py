"""The one path by which the workbench writes HTML: every value is escaped unless it is already safe.

Safe means a `markupsafe.Markup` made here: `html(template, *values)` fills a literal template and
escapes every value that is not itself Markup, `join` escapes its parts, and `plotly_div` wraps
plotly's own output (its serializer escapes <, > and / inside the JSON it embeds). The sinks (widget
HTML through `widgets.base.SafeHTML`, pages through `viz.export.write_html`, a record's `_repr_html_`
through `display.notebook_html`) escape any plain string they are handed, so a module name, token or
note from a hostile trace file shows as text and never runs. tests/test_html_safety.py checks that no other
module builds Markup itself and that templates are literals.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from markupsafe import Markup, escape

__all__ = ["Markup", "html", "static", "join", "text", "plotly_div", "is_safe"]


def html(template: str, /, *args: Any, **kwargs: Any) -> Markup:
    """Fill a literal HTML `template` ({} fields, format specs allowed); values are escaped unless Markup."""
    return Markup(template).format(*args, **kwargs)


def static(template: str) -> Markup:
    """A constant piece of HTML with no fields (a <style> block, say), taken as is."""
    return Markup(template)


def join(separator: str, parts: Iterable[Any]) -> Markup:
    """Parts joined by a literal HTML separator; plain strings among them are escaped."""
    return Markup(separator).join(parts)


def text(value: Any) -> Markup:
    """`value` as HTML text: escaped, unless it is Markup already."""
    return escape(value)


def is_safe(value: Any) -> bool:
    """True for HTML built through this module (which a sink inserts as is)."""
    return isinstance(value, Markup)


def plotly_div(fig: Any, *, include_plotlyjs: bool) -> Markup:
    """A plotly figure as a <div> (with the plotly.js bundle inline when asked).

    plotly.io.to_html embeds the figure as JSON in which <, > and / are written as \\u escapes, so
    strings inside the figure cannot close the script or open a tag."""
    import plotly.io as pio

    return Markup(pio.to_html(fig, include_plotlyjs=include_plotlyjs, full_html=False,
                              config={"displaylogo": False, "responsive": True}))
