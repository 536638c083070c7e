#!/usr/bin/env bash
# Evaluate a pointbert checkpoint on the scanobjectnn test split (configs/scanobjectnn/pointbert.yaml).
#   bash scripts/eval_scanobjectnn_pointbert.sh [CHECKPOINT] [--vote N] [--json] [key=value ...]
# CHECKPOINT defaults to runs/scanobjectnn/pointbert/best.pth.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
CKPT=runs/scanobjectnn/pointbert/best.pth
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ] && [ "${1#*=}" = "$1" ]; then
    CKPT=$1
    shift
fi
exec python -m pointdr2 eval configs/scanobjectnn/pointbert.yaml --checkpoint "$CKPT" "$@"
