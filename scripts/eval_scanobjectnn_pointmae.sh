#!/usr/bin/env bash
# Evaluate a pointmae checkpoint on the scanobjectnn test split (configs/scanobjectnn/pointmae.yaml).
#   bash scripts/eval_scanobjectnn_pointmae.sh [CHECKPOINT] [--vote N] [--json] [key=value ...]
# CHECKPOINT defaults to runs/scanobjectnn/pointmae/best.pth.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
CKPT=runs/scanobjectnn/pointmae/best.pth
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ] && [ "${1#*=}" = "$1" ]; then
    CKPT=$1
    shift
fi
exec python -m pointdr2 eval configs/scanobjectnn/pointmae.yaml --checkpoint "$CKPT" "$@"
