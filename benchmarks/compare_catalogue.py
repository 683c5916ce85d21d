"""The catalogue of planted port mistakes as the table in RESULTS.md: for each mistake and port style, whether
`compare` found the first divergence at the right point, named the cause, and whether the fix closed the gap.

The entries are the tests' own (tests/compare/catalogue_*.py, checked by tests/compare/test_catalogue_*.py);
this script runs the same checks and prints them as one markdown table, mistakes as rows and styles as columns,
then the clean ports of each style.

Run: `PYTHONPATH=.:tests:tests/compare .venv/bin/python benchmarks/compare_catalogue.py`
"""

from __future__ import annotations

import argparse
import importlib
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
STYLES = ("catalogue_hf", "catalogue_nanogpt", "catalogue_gptfast")


def _mark(ok: bool) -> str:
    return "yes" if ok else "**no**"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    for extra in (ROOT / "tests", ROOT / "tests" / "compare"):
        sys.path.insert(0, str(extra))
    from catalogue import check, clean  # noqa: PLC0415 (the tests' folder joins the path above)

    torch.manual_seed(0)
    modules = [importlib.import_module(name) for name in STYLES]
    styles = [m.MISTAKES[0].style for m in modules]
    rows: dict[str, dict[str, str]] = {}
    failures = 0
    start = time.perf_counter()
    for module, style in zip(modules, styles):
        for mistake in module.MISTAKES:
            outcome = check(mistake)
            ok = outcome.found and outcome.named and outcome.fixed
            failures += not ok
            form = mistake.style.removeprefix(style).strip(" ()")  # "gpt-fast-like (cossin)": the cos/sin form
            cell = (f"{form + ': ' if form else ''}{_mark(outcome.found)} / {_mark(outcome.named)} / "
                    f"{_mark(outcome.fixed)} (`{mistake.fix}`)")
            cells = rows.setdefault(mistake.what, {})
            cells[style] = f"{cells[style]}<br>{cell}" if style in cells else cell  # one mistake in several forms
    took = time.perf_counter() - start
    print(f"torch {torch.__version__}, python {platform.python_version()}, {platform.machine()}; "
          f"{sum(len(m.MISTAKES) for m in modules)} mistakes in {took:.1f} s")
    print()
    print("| mistake | " + " | ".join(styles) + " |")
    print("|---|" + "---|" * len(styles))
    for what, cells in rows.items():
        print(f"| {what} | " + " | ".join(cells.get(s, "-") for s in styles) + " |")
    clean_cells = []
    for module in modules:  # every port a style writes (a style may keep its RoPE or mask in several forms)
        ports = {(id(m.reference), m.style): m for m in module.MISTAKES}.values()
        verdicts = []
        for m in ports:
            c = clean(m.reference(), m.port)
            ok = c.equivalent and c.diagnosis is None
            failures += not ok
            verdicts.append("" if ok else f"**{c.verdict()}**")
        bad = [v for v in verdicts if v]
        clean_cells.append(f"{len(verdicts)} port(s): no divergence, no cause" if not bad else "; ".join(bad))
    print("| (clean port) | " + " | ".join(clean_cells) + " |")
    print()
    print("Each cell: found at the expected point / the cause named / the fix closes the gap to noise (the fix).")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
