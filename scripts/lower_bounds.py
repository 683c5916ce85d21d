"""Prints pip constraints that pin every `>=` requirement of pyproject.toml (the package's and its dev
extra's) at its lower bound, so `make test-oldest` can check that each bound is one the code works with.
Requirements without a `>=` bound, and names given as arguments, are left out.

Usage: python scripts/lower_bounds.py [NAME_TO_SKIP...] > constraints.txt
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    sys.exit("scripts/lower_bounds.py needs Python 3.11+ (tomllib) to read pyproject.toml.")

project = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"]
skip = {name.lower() for name in sys.argv[1:]}
requirements = project["dependencies"] + project["optional-dependencies"]["dev"]
for requirement in requirements:
    match = re.fullmatch(r"([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?\s*>=\s*([0-9][0-9A-Za-z.]*)\s*(?:,.*)?", requirement)
    if match and match.group(1).lower() not in skip:
        print(f"{match.group(1)}=={match.group(2)}")
