#!/usr/bin/env bash
# Re-executes tutorial notebooks in place, so their committed outputs are this code's outputs.
# Usage: scripts/run_notebooks.sh [NOTEBOOK...]   (all of notebooks/*.ipynb by default)
# Widget state is not stored (the views are rebuilt when a notebook runs). Then check every printed
# digit with `make nb-matrix`: strict nbval with this machine's kernels, the AVX2 kernels and one thread.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || set -- notebooks/*.ipynb
for nb in "$@"; do
  echo "executing $nb"
  (cd "$(dirname "$nb")" && ../.venv/bin/jupyter nbconvert --to notebook --execute --inplace \
    --ExecutePreprocessor.timeout=600 --ExecutePreprocessor.store_widget_state=False "$(basename "$nb")")
  .venv/bin/python - "$nb" <<'PY'
import sys

import nbformat

nb = nbformat.read(sys.argv[1], as_version=4)
if nb.metadata.pop("widgets", None) is not None:
    nbformat.write(nb, sys.argv[1])
PY
done
