"""The doctor's `Report` as an HTML table: a pure function of the report, every value escaped."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..safehtml import Markup, html, join

if TYPE_CHECKING:
    from ..doctor.report import Finding, Report

STATUS_COLOURS = {"pass": "#1a7f37", "warn": "#9a6700", "fail": "#cf222e", "n/a": "#6e7781"}
STATUS_BACKGROUNDS = {"pass": "#dafbe1", "warn": "#fff8c5", "fail": "#ffebe9", "n/a": "#f6f8fa"}
LEFT = "text-align:left;vertical-align:top"  # JupyterLab right-aligns table cells by default


def report_table(report: Report) -> Markup:
    """The headline over one row per finding: check, status, finding and pitfall, evidence, fix (when not passing)."""
    return html("<div class='workbench-doctor'><p><b>{}</b></p>"
                "<table><thead><tr><th>check</th><th>status</th><th>finding / pitfall</th><th>evidence</th>"
                "<th>fix</th></tr></thead><tbody>{}</tbody></table></div>",
                report.headline(), join("", (finding_row(f) for f in report.findings)))


def finding_row(f: Finding) -> Markup:
    """One finding as a table row, its status cell coloured."""
    colour, bg = STATUS_COLOURS.get(f.status, "#000"), STATUS_BACKGROUNDS.get(f.status, "#fff")
    status = html('<td style="color:{};background:{};font-weight:bold;text-align:center">{}</td>',
                  colour, bg, str(f.status).upper())
    evidence = join("<br>", (html("<code>{}</code> = {}", k, v) for k, v in f.evidence_shown()))
    return html('<tr class="doctor-{}"><td style="{}"><b>{}</b></td>{}<td style="{}">{}<br><small>{}</small></td>'
                '<td style="{};font-size:smaller">{}</td><td style="{}">{}</td></tr>',
                str(f.status).replace("/", ""), LEFT, f.check, status, LEFT, f.summary, f.pitfall, LEFT, evidence,
                LEFT, f.advice)
