"""`LoadReport`: what happened when weights were loaded into a model.

Its HTML table is a view, `workbench.viz.load.load_report_table`, reached through `workbench.display`."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..display import notebook_html


@dataclass
class LoadReport:
    """Missing and unexpected keys, shape mismatches, tied weights and dtype casts of one load."""

    source: str = ""
    format: str = ""
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    tied: list[tuple[str, str]] = field(default_factory=list)  # (alias, storage owner)
    casts: list[tuple[str, str, str]] = field(default_factory=list)  # (key, from dtype, to dtype)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing is missing and no shape disagrees."""
        return not self.missing and not self.mismatched

    def rows(self) -> list[tuple[str, str, str]]:
        """(kind, key, detail) rows, the content of both the text and the HTML table."""
        out = [("missing", k, "not in file; left at its initial value") for k in self.missing]
        out += [("unexpected", k, "in file; not used by the model") for k in self.unexpected]
        out += [("shape mismatch", k, f"file {list(a)} vs model {list(b)}") for k, a, b in self.mismatched]
        out += [("tied", a, f"shares storage with {b}") for a, b in self.tied]
        out += [("cast", k, f"{a} -> {b}") for k, a, b in self.casts]
        out += [("note", "", n) for n in self.notes]
        return out

    def summary(self) -> str:
        status = "ok" if self.ok else "PROBLEMS"
        return (
            f"LoadReport[{status}] {self.format} {self.source}: {len(self.missing)} missing, "
            f"{len(self.unexpected)} unexpected, {len(self.mismatched)} mismatched, "
            f"{len(self.tied)} tied, {len(self.casts)} cast"
        )

    def __str__(self) -> str:
        lines = [self.summary()]
        rows = self.rows()
        if rows:
            width = max(len(k) for k, _, _ in rows)
            lines += [f"  {kind:<{width}}  {key}  {detail}".rstrip() for kind, key, detail in rows]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        """The rows as an HTML table, by the view registered in `workbench.display`."""
        return notebook_html(self)
