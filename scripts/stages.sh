#!/usr/bin/env bash
# Runs the test stages one after another, every stage even when an earlier one failed, then prints one
# line per stage and exits non-zero if any failed. Usage: scripts/stages.sh BIN_DIR [STAGE...]
# Stages: ruff, imports (import-linter's layer contracts), types (mypy), pytest, nbval (all by default).
# tests runs pytest and nbval together on every core (pytest-xdist, one torch thread a worker: see
# parallel() below); quick is the inner loop's subset of pytest (tests not marked slow or browser), in
# parallel too. nbval-avx2 and nbval-1thread run the notebooks with the kernels of a CPU without AVX-512,
# or on one thread, as another machine would; NOTEBOOKS=... narrows the notebook stages to some files.
# mypy keeps its incremental cache outside the checkout (MYPY_CACHE_DIR, default ~/.cache/workbench/mypy), so a
# fresh clone re-checks only what changed: mypy validates every cached entry against its source's hash.
# WORKERS=N sets the number of pytest workers (default: the cores, at most 4). BIN_DIR is the venv's bin
# folder.
set -u
bin=${1:?usage: scripts/stages.sh BIN_DIR [STAGE...]}
shift
stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(ruff imports types pytest nbval)

nbval() {
  "$bin/python" -m pytest -q --nbval ${NOTEBOOKS:-notebooks} --nbval-sanitize-with notebooks/sanitize.cfg -p no:cacheprovider
}

# pytest-xdist on every core. Each worker (and each notebook kernel or subprocess it starts) runs torch on one
# thread: two workers of two threads each on two cores would fight for them. The notebooks print only what a
# one-thread run reproduces (nb-matrix checks it). Work is handed out a file at a time (--dist loadfile), so
# a notebook's cells run in order in one kernel and a module's fixtures are built once; notebooks come
# first, so the longest files start first.
parallel() {
  local cores
  cores=$(nproc 2>/dev/null || echo 2)
  [ "$cores" -le 4 ] || cores=4
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 "$bin/python" -m pytest -q -p no:cacheprovider \
    --numprocesses "${WORKERS:-$cores}" --dist loadfile "$@"
}

run_stage() {
  case "$1" in
    ruff) "$bin/ruff" check . ;;
    imports) "$bin/lint-imports" ;;
    types) MYPY_CACHE_DIR="${MYPY_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/workbench/mypy}" "$bin/mypy" ;;
    pytest) "$bin/python" -m pytest -q tests ;;
    nbval) nbval ;;
    tests) parallel --nbval --nbval-sanitize-with notebooks/sanitize.cfg --ignore-glob='tests/**/*.ipynb' \
             --durations=15 notebooks tests ;;
    quick) parallel -m "not slow and not browser" tests ;;
    nbval-avx2) ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 nbval ;;
    nbval-1thread) OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nbval ;;
    *) echo "unknown stage: $1" >&2; return 2 ;;
  esac
}

summary=()
failed=0
for stage in "${stages[@]}"; do
  echo "=== stage $stage ==="
  start=$SECONDS
  run_stage "$stage"
  rc=$?
  took=$((SECONDS - start))
  if [ "$rc" -eq 0 ]; then
    summary+=("$(printf '%-8s ok      (%d s)' "$stage" "$took")")
  else
    summary+=("$(printf '%-8s FAILED  (exit %d, %d s)' "$stage" "$rc" "$took")")
    failed=1
  fi
done

echo "=== stage summary ==="
printf '%s\n' "${summary[@]}"
exit "$failed"
