#!/usr/bin/env bash
# Evaluate a checkpoint on the test split:  bash scripts/eval.sh CONFIG [CHECKPOINT] [--vote N] [--json] [key=value ...]
# CHECKPOINT defaults to best.pth in the config's run.dir.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
CONFIG=${1:?usage: scripts/eval.sh CONFIG [CHECKPOINT] [options]}
shift
CKPT=""
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ] && [ "${1#*=}" = "$1" ]; then
    CKPT=$1
    shift
fi
if [ -z "$CKPT" ]; then
    RUN_DIR=$(python -c "import sys; from pointdr2.config import load_config; print(load_config(sys.argv[1]).run.dir)" "$CONFIG")
    CKPT=$RUN_DIR/best.pth
fi
exec python -m pointdr2 eval "$CONFIG" --checkpoint "$CKPT" "$@"
