#!/usr/bin/env bash
# Evaluate a pointmae checkpoint on the modelnet40 test split (configs/modelnet40/pointmae.yaml).
#   bash scripts/eval_modelnet40_pointmae.sh [CHECKPOINT] [--vote N] [--json] [key=value ...]
# CHECKPOINT defaults to runs/modelnet40/pointmae/best.pth.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
CKPT=runs/modelnet40/pointmae/best.pth
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ] && [ "${1#*=}" = "$1" ]; then
    CKPT=$1
    shift
fi
exec python -m pointdr2 eval configs/modelnet40/pointmae.yaml --checkpoint "$CKPT" --vote 10 "$@"
