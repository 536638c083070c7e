#!/usr/bin/env bash
# Finetune pointnext-s on scanobjectnn (configs/scanobjectnn/pointnext-s.yaml); the run directory defaults to runs/scanobjectnn/pointnext-s.
#   bash scripts/train_scanobjectnn_pointnext_s.sh [key=value ...] [--resume RUN_DIR] [--force]
# e.g. model.pretrained=ckpts/pretrain.pth dataset.root=data/... finetune.mode=conventional
# NPROC=N runs N processes with torchrun (scripts/dist_train.sh).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
if [ "${NPROC:-1}" -gt 1 ]; then
    exec bash scripts/dist_train.sh "$NPROC" configs/scanobjectnn/pointnext-s.yaml run.dir=runs/scanobjectnn/pointnext-s "$@"
fi
exec python -m pointdr2 train configs/scanobjectnn/pointnext-s.yaml run.dir=runs/scanobjectnn/pointnext-s "$@"
