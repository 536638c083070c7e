#!/usr/bin/env bash
# Train with one config:  bash scripts/train.sh CONFIG [key=value ...] [--resume RUN_DIR] [--force]
# e.g. model.pretrained=ckpts/pretrain.pth dataset.root=data/... finetune.mode=conventional
# NPROC=N runs N processes with torchrun (scripts/dist_train.sh). The run directory is the config's run.dir.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
if [ "${NPROC:-1}" -gt 1 ]; then
    exec bash scripts/dist_train.sh "$NPROC" "$@"
fi
exec python -m pointdr2 train "$@"
