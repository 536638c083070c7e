#!/usr/bin/env bash
# Evaluate a pointnext-s checkpoint on the scanobjectnn test split (configs/scanobjectnn/pointnext-s.yaml).
#   bash scripts/eval_scanobjectnn_pointnext_s.sh [CHECKPOINT] [--vote N] [--json] [key=value ...]
# CHECKPOINT defaults to runs/scanobjectnn/pointnext-s/best.pth.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
CKPT=runs/scanobjectnn/pointnext-s/best.pth
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ] && [ "${1#*=}" = "$1" ]; then
    CKPT=$1
    shift
fi
exec python -m pointdr2 eval configs/scanobjectnn/pointnext-s.yaml --checkpoint "$CKPT" "$@"
