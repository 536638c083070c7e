#!/usr/bin/env bash
# Evaluate a pointnext-xl checkpoint on the s3dis test split (configs/s3dis/pointnext-xl.yaml).
#   bash scripts/eval_s3dis_pointnext_xl.sh [CHECKPOINT] [--vote N] [--json] [key=value ...]
# CHECKPOINT defaults to runs/s3dis/pointnext-xl/best.pth.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
CKPT=runs/s3dis/pointnext-xl/best.pth
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ] && [ "${1#*=}" = "$1" ]; then
    CKPT=$1
    shift
fi
exec python -m pointdr2 eval configs/s3dis/pointnext-xl.yaml --checkpoint "$CKPT" "$@"
