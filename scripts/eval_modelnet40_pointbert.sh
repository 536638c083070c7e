#!/usr/bin/env bash
# Evaluate a pointbert checkpoint on the modelnet40 test split (configs/modelnet40/pointbert.yaml).
#   bash scripts/eval_modelnet40_pointbert.sh [CHECKPOINT] [--vote N] [--json] [key=value ...]
# CHECKPOINT defaults to runs/modelnet40/pointbert/best.pth.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
CKPT=runs/modelnet40/pointbert/best.pth
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ] && [ "${1#*=}" = "$1" ]; then
    CKPT=$1
    shift
fi
exec python -m pointdr2 eval configs/modelnet40/pointbert.yaml --checkpoint "$CKPT" --vote 10 "$@"
