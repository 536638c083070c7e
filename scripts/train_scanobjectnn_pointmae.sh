#!/usr/bin/env bash
# Finetune pointmae on scanobjectnn (configs/scanobjectnn/pointmae.yaml); the run directory defaults to runs/scanobjectnn/pointmae.
#   bash scripts/train_scanobjectnn_pointmae.sh [key=value ...] [--resume RUN_DIR] [--force]
# e.g. model.pretrained=ckpts/pretrain.pth dataset.root=data/... finetune.mode=conventional
# NPROC=N runs N processes with torchrun (scripts/dist_train.sh).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
if [ "${NPROC:-1}" -gt 1 ]; then
    exec bash scripts/dist_train.sh "$NPROC" configs/scanobjectnn/pointmae.yaml run.dir=runs/scanobjectnn/pointmae "$@"
fi
exec python -m pointdr2 train configs/scanobjectnn/pointmae.yaml run.dir=runs/scanobjectnn/pointmae "$@"
