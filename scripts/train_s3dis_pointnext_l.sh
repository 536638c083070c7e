#!/usr/bin/env bash
# Finetune pointnext-l on s3dis (configs/s3dis/pointnext-l.yaml); the run directory defaults to runs/s3dis/pointnext-l.
#   bash scripts/train_s3dis_pointnext_l.sh [key=value ...] [--resume RUN_DIR] [--force]
# e.g. model.pretrained=ckpts/pretrain.pth dataset.root=data/... finetune.mode=conventional
# NPROC=N runs N processes with torchrun (scripts/dist_train.sh).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
if [ "${NPROC:-1}" -gt 1 ]; then
    exec bash scripts/dist_train.sh "$NPROC" configs/s3dis/pointnext-l.yaml run.dir=runs/s3dis/pointnext-l "$@"
fi
exec python -m pointdr2 train configs/s3dis/pointnext-l.yaml run.dir=runs/s3dis/pointnext-l "$@"
