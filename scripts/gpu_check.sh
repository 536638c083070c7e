#!/usr/bin/env bash
# The prepared GPU check: in at most ~8 minutes on one CUDA GPU, writes one report file with
#   1. the CUDA tests: every index op on the torch and Triton backends against the CPU brute force, the
#      differentiable ops' values and gradients against the CPU, Dr2Stack's reversible gradients with
#      drop-path RNG replay and under bf16 autocast (tests/ops/test_ops_cuda.py, tests/reversible/test_dr2_cuda.py);
#   2. pointdr2 bench ops --quick (the CPU backends against their anchors on this machine's cores);
#   3. pointdr2 bench memory on CUDA: Point-MAE at batch 32 (1,024 points) and PointNeXt-XL on a 24,000-point
#      crop (batch 2), every mode and the schedule's start and end;
#   4. pointdr2 bench plan --device cuda --short: the plan's prediction against torch.cuda.max_memory_allocated
#      (and the saved-tensor meter) for Point-MAE batch 32 and PointNeXt-L 24k.
#
# usage: scripts/gpu_check.sh [--dry-run] [--out REPORT]   (default report: gpu_check_report.txt)
#   --dry-run: no GPU needed; checks that every command below parses (pointdr2's own argparse, no work done)
#              and that every test file it names exists and collects, then exits (0: all good).
# Environment: PYTHON (default: python), GPU_CHECK_TIMEOUT (seconds per step, default 240).
set -uo pipefail
cd "$(dirname "$0")/.."

read -ra PY <<<"${PYTHON:-python}"  # may hold a wrapper, e.g. "nice -n 19 .venv/bin/python"
OUT=gpu_check_report.txt
DRY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) shift; OUT=${1:?--out needs a file} ;;
    -h|--help) sed -n 2,17p "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1 (expected --dry-run, --out FILE)" >&2; exit 2 ;;
  esac
  shift
done
STEP_TIMEOUT=${GPU_CHECK_TIMEOUT:-240}

TESTS=(tests/ops/test_ops_cuda.py tests/reversible/test_dr2_cuda.py)
# one pointdr2 command per line (arguments split on spaces)
COMMANDS=(
  "bench ops --quick --repeat 3"
  "bench memory --model pointmae --batch 32 --points 1024 --device cuda --modes conventional,checkpoint,dr2net --auto start,end --steps 3 --measure saved,peak,time"
  "bench memory --model pointnext-xl --batch 2 --points 24000 --device cuda --modes conventional,checkpoint,dr2net --auto start,end --steps 3 --measure saved,peak,time"
  "bench plan --device cuda --short --threads 4"
)

if [ "$DRY" = 1 ]; then
  status=0
  for t in "${TESTS[@]}"; do
    if [ ! -f "$t" ]; then echo "missing test file: $t" >&2; status=1; fi
  done
  if ! "${PY[@]}" -m pytest -q -p no:cacheprovider --collect-only "${TESTS[@]}" >/dev/null; then
    echo "the CUDA tests do not collect" >&2; status=1
  fi
  # every command through pointdr2's own parser in one process (and the benchmark's own option checks)
  if ! printf '%s\n' "${COMMANDS[@]}" | "${PY[@]}" -c 'import importlib, shlex, sys
from pointdr2.cli import build_parser
bad = 0
for line in sys.stdin.read().splitlines():
    argv = shlex.split(line)
    try:
        args = build_parser(argv).parse_args(argv)
        check = getattr(importlib.import_module(args.func.__module__), "check_arguments", None)
        if check is not None:
            check(args)
        print("parses: pointdr2", line)
    except (SystemExit, ValueError) as exc:
        bad += 1
        print("does not parse: pointdr2", line, "-", exc, file=sys.stderr)
sys.exit(1 if bad else 0)'; then
    status=1
  fi
  [ "$status" = 0 ] && echo "dry run ok: ${#TESTS[@]} test files, ${#COMMANDS[@]} commands"
  exit $status
fi

if ! "${PY[@]}" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_check.sh: no CUDA device visible to ${PY[*]} (use --dry-run on a machine without a GPU)" >&2
  exit 2
fi

start=$(date +%s)
failed=()
{
  echo "# pointdr2 GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  "${PY[@]}" -m pointdr2 info
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
} >"$OUT" 2>&1

run_step() {  # run_step NAME COMMAND...: append its output to the report, note a failure
  local name=$1; shift
  echo "== $name" | tee -a "$OUT"
  local t0=$(date +%s)
  timeout "$STEP_TIMEOUT" "$@" >>"$OUT" 2>&1
  local rc=$?
  echo "-- $name: exit $rc in $(( $(date +%s) - t0 )) s" | tee -a "$OUT"
  [ "$rc" = 0 ] || failed+=("$name (exit $rc)")
}

run_step "CUDA tests" "${PY[@]}" -m pytest -q -p no:cacheprovider -rs "${TESTS[@]}"
for c in "${COMMANDS[@]}"; do
  # shellcheck disable=SC2086
  run_step "pointdr2 $c" "${PY[@]}" -m pointdr2 $c
done

{
  echo "== total $(( $(date +%s) - start )) s"
  if [ ${#failed[@]} = 0 ]; then echo "ALL PASSED"; else printf 'FAILED: %s\n' "${failed[@]}"; fi
} | tee -a "$OUT"
[ ${#failed[@]} = 0 ]
