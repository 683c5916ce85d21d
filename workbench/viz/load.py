"""A `LoadReport` as an HTML table: what loading weights left missing, unexpected, mismatched, tied or cast."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..safehtml import Markup, html, join

if TYPE_CHECKING:
    from ..io.report import LoadReport


def load_report_table(report: LoadReport) -> Markup:
    """The summary line over the report's (kind, key, detail) rows."""
    body = join("", (html("<tr><td>{}</td><td><code>{}</code></td><td>{}</td></tr>", kind, key, detail)
                     for kind, key, detail in report.rows()))
    return html("<div><b>{}</b><table><thead><tr><th>kind</th><th>key</th><th>detail</th></tr></thead>"
                "<tbody>{}</tbody></table></div>", report.summary(), body)
