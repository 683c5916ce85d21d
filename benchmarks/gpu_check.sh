#!/usr/bin/env bash
# What a lent GPU machine should run, in as few calls as its short lease allows.
#
#   bash benchmarks/gpu_check.sh [STEP ...]      (from the repository root; default: every step)
#
# Steps, with the wall-clock limit each gets:
#   env       60 s   torch / transformers versions and the GPU's name
#   tests    180 s   the device-parametrised tests and every test with a CUDA-only case (not the
#                    `slow` ones: they need the real SmolLM2 weights)
#   fast     240 s   benchmarks/fast.py --no-compile: forward and decode ratios vs HF
#   overhead 240 s   benchmarks/overhead.py --breakdown: capture overhead, each part on its own
#   compile  300 s   benchmarks/fast.py --compile --skip-decode: the inductor-compiled forward
#   compiled-decode 300 s   benchmarks/fast.py --compile --skip-forward: decode with fast="compile"
#   carrier-decode  300 s   the same with --carrier compile: torch.compile(mode="reduce-overhead") makes
#                    the CUDA graphs instead of the hand-built capture; compare with compiled-decode
# Together they take longer than a lease allows (15 minutes of device time per task, the machine's start
# included, at most 600 s per command). BUDGET=SECONDS bounds the whole script: each step gets the smaller
# of its own limit and the time left, a step with under MIN_STEP (30) s left is skipped, and the end of the output
# (and $OUT/summary.txt) names the steps not run, as the command that runs them next. One call per lease:
#   device run: BUDGET=450 bash benchmarks/gpu_check.sh      (timeout_s=500; leaves ~4 min for a rerun)
# The default order puts the GPU rows first after the tests: env tests fast overhead carrier-decode
# compiled-decode compile. Needs only torch, transformers, safetensors, tokenizers, tqdm and pytest (no plotly,
# ipywidgets or gguf; the real SmolLM2 weights are too large to carry, so random weights of its shape
# are used). Each step's full log goes to $OUT/<step>.log ($OUT is what the device tool brings back;
# ./gpu_check_out elsewhere); its tail is printed. Exit status 1 when any step failed or was skipped.
set -u
out=${OUT:-gpu_check_out}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
failed=0

budget=${BUDGET:-0}  # seconds for the whole script; 0: no bound
min_step=${MIN_STEP:-30}  # seconds a step needs at least; fewer left: skipped
skipped=()

step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2 start=$SECONDS rc left
  shift 2
  if [ "$budget" -gt 0 ]; then
    left=$((budget - SECONDS))
    if [ "$left" -lt "$min_step" ]; then
      echo "=== $name: skipped, ${left} s of BUDGET=$budget left"
      skipped+=("$name")
      failed=1
      return
    fi
    [ "$limit" -le "$left" ] || limit=$left
  fi
  echo "=== $name (limit ${limit} s): $*"
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  rc=$?
  tail -n "${TAIL:-20}" "$out/$name.log"
  echo "=== $name: exit $rc after $((SECONDS - start)) s"
  [ "$rc" -eq 0 ] || failed=1
}

run() {
  case $1 in
    env) step env 60 "$py" -c "import torch, transformers, sys
print(sys.version.split()[0], 'torch', torch.__version__, 'transformers', transformers.__version__)
print('cuda', torch.cuda.is_available() and torch.cuda.get_device_name())" ;;
    tests) step tests 180 "$py" -m pytest -q -p no:cacheprovider -rs -m "not slow" tests/test_devices.py \
      tests/model/test_fast.py tests/generation/test_fast_generation.py tests/generation/test_cache_growth.py \
      tests/capture tests/model/test_compile.py ;;
    fast) step fast 240 "$py" benchmarks/fast.py --no-compile ;;
    overhead) step overhead 240 "$py" benchmarks/overhead.py --breakdown --no-real ;;
    compile) step compile 300 "$py" benchmarks/fast.py --compile --skip-decode ;;
    compiled-decode) step compiled-decode 300 "$py" benchmarks/fast.py --compile --skip-forward ;;
    carrier-decode) step carrier-decode 300 "$py" benchmarks/fast.py --compile --skip-forward --carrier compile ;;
    *) echo "unknown step '$1' (env tests fast overhead compile compiled-decode carrier-decode)"; failed=1 ;;
  esac
}

if [ $# -eq 0 ]; then set -- env tests fast overhead carrier-decode compiled-decode compile; fi
for s in "$@"; do run "$s"; done
{
  echo "ran for $SECONDS s; failed or skipped: $failed"
  if [ ${#skipped[@]} -gt 0 ]; then echo "not run (budget): bash benchmarks/gpu_check.sh ${skipped[*]}"; fi
} | tee "$out/summary.txt"
exit $failed
