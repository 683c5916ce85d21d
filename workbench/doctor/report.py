"""`Finding` (one check's verdict with its numbers) and `Report` (all findings, as text or markdown).

The HTML table is a view, `workbench.viz.doctor.report_table`, which `Report._repr_html_` reaches through
`workbench.display`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..display import notebook_html

STATUSES = ("pass", "warn", "fail", "n/a")


class Within(float):
    """A difference judged against a tolerance (the float itself is the measured value).

    At or under the tolerance its digits are arithmetic noise: another CPU, another BLAS or another
    thread count prints different ones. So it is shown as a bound, the first of 1/100, 1/10 or all of
    the tolerance that holds it ("<= 2.9e-05"), which every machine prints alike; above the tolerance it
    is shown as the number it is.
    """

    tolerance: float

    def __new__(cls, value: float, tolerance: float) -> Within:
        self = super().__new__(cls, value)
        self.tolerance = float(tolerance)
        return self

    def bound(self) -> float | None:
        """The bound shown in place of the value, or None when the value exceeds the tolerance (or is NaN)."""
        if not (self.tolerance > 0 and float(self) <= self.tolerance):
            return None
        return next(self.tolerance * f for f in (0.01, 0.1, 1.0) if float(self) <= self.tolerance * f)


def _round_up(value: float) -> float:
    """`value` rounded up to 2 significant digits, so that a bound printed with them still holds."""
    exponent = math.floor(math.log10(value)) - 1
    return math.ceil(value / 10.0**exponent - 1e-9) * 10.0**exponent


def format_value(value: Any) -> str:
    """Numbers a person can read: 3 significant digits, scientific when tiny or huge; noise as a bound."""
    if isinstance(value, Within) and (bound := value.bound()) is not None:
        return f"<= {_round_up(bound):.1e}"
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        if value == 0 or 1e-3 <= abs(value) < 1e4:
            return f"{value:.3g}"
        return f"{value:.2e}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value[:8]) + (", ..." if len(value) > 8 else "") + "]"
    return str(value)


@dataclass
class Finding:
    """The verdict of one check: status, a one-line summary, the evidence as numbers, pitfall and fix."""

    check: str  # registry name, e.g. "causal_leak"
    status: str  # "pass", "warn", "fail" or "n/a"
    summary: str  # one line: what was measured and what it means
    evidence: dict[str, Any] = field(default_factory=dict)  # name -> number (or short text, e.g. a module path)
    pitfall: str = ""  # the implementation mistake this check detects
    fix: str = ""  # how to fix it when the check does not pass
    seconds: float = 0.0  # time the check took

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status={self.status!r} is not one of {STATUSES}.")

    @property
    def advice(self) -> str:
        """The fix, when the check did not pass (warn or fail); empty otherwise."""
        return self.fix if self.status in ("warn", "fail") else ""

    def evidence_shown(self) -> list[tuple[str, str]]:
        """(name, value as `format_value` shows it) for each piece of evidence."""
        return [(k, format_value(v)) for k, v in self.evidence.items()]

    def evidence_text(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.evidence_shown())

    def __repr__(self) -> str:
        return f"Finding({self.check}: {self.status.upper()} - {self.summary})"


class Report:
    """Findings of one `diagnose` run, in check order. Index by position or by check name."""

    def __init__(self, findings: list[Finding], model: str = "", seconds: float = 0.0) -> None:
        self.findings = list(findings)
        self.model = model
        self.seconds = seconds

    # --- queries ------------------------------------------------------------------------------
    @property
    def failed(self) -> list[Finding]:
        """Findings with status "fail"."""
        return [f for f in self.findings if f.status == "fail"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.status == "warn"]

    @property
    def ok(self) -> bool:
        """True when no check failed (warnings allowed)."""
        return not self.failed

    def statuses(self) -> dict[str, str]:
        """Check name -> status."""
        return {f.check: f.status for f in self.findings}

    def counts(self) -> dict[str, int]:
        return {s: sum(f.status == s for f in self.findings) for s in STATUSES}

    def __getitem__(self, key: int | str) -> Finding:
        if isinstance(key, int):
            return self.findings[key]
        for f in self.findings:
            if f.check == key:
                return f
        raise KeyError(f"no finding for check {key!r}; this report has {[f.check for f in self.findings]}.")

    def __iter__(self):
        return iter(self.findings)

    def __len__(self) -> int:
        return len(self.findings)

    # --- rendering ----------------------------------------------------------------------------
    def headline(self) -> str:
        c = self.counts()
        return (f"Doctor report for {self.model or 'model'}: {c['fail']} fail, {c['warn']} warn, "
                f"{c['pass']} pass, {c['n/a']} n/a ({self.seconds:.1f} s)")

    def to_markdown(self) -> str:
        """A markdown table: check | status | summary | evidence | fix (fix only when not passing)."""
        lines = [f"**{self.headline()}**", "", "| check | status | summary | evidence | fix |", "|---|---|---|---|---|"]
        for f in self.findings:
            cells = [f.check, f.status.upper(), f.summary, f.evidence_text(), f.advice]
            lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        """The findings as an HTML table, by the view registered in `workbench.display`."""
        return notebook_html(self)

    def __str__(self) -> str:
        width = max((len(f.check) for f in self.findings), default=5)
        lines = [self.headline()]
        for f in self.findings:
            lines.append(f"  {f.check:<{width}}  {f.status.upper():<4}  {f.summary}")
            if f.status in ("warn", "fail") and f.evidence:
                lines.append(f"  {'':<{width}}        evidence: {f.evidence_text()}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return str(self)
