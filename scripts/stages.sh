#!/usr/bin/env bash
# Runs the test stages one after another, every stage even when an earlier one failed, then prints one
# line per stage and exits non-zero if any failed. Usage: scripts/stages.sh BIN_DIR [STAGE...]
# Stages: ruff, imports (import-linter's layer contracts), types (mypy), pytest, nbval (all by default).
# nbval-avx2 and nbval-1thread run the notebooks with the kernels of a CPU without AVX-512, or on one
# thread, as another machine would; NOTEBOOKS=... narrows the notebook stages to some files. BIN_DIR is
# the venv's bin folder.
set -u
bin=${1:?usage: scripts/stages.sh BIN_DIR [STAGE...]}
shift
stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(ruff imports types pytest nbval)

nbval() {
  "$bin/python" -m pytest -q --nbval ${NOTEBOOKS:-notebooks} --nbval-sanitize-with notebooks/sanitize.cfg -p no:cacheprovider
}

run_stage() {
  case "$1" in
    ruff) "$bin/ruff" check . ;;
    imports) "$bin/lint-imports" ;;
    types) "$bin/mypy" ;;
    pytest) "$bin/python" -m pytest -q tests ;;
    nbval) nbval ;;
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
