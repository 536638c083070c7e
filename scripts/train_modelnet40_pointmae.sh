#!/usr/bin/env bash
# Finetune pointmae on modelnet40 (configs/modelnet40/pointmae.yaml); the run directory defaults to runs/modelnet40/pointmae.
#   bash scripts/train_modelnet40_pointmae.sh [key=value ...] [--resume RUN_DIR] [--force]
# e.g. model.pretrained=ckpts/pretrain.pth dataset.root=data/... finetune.mode=conventional
# NPROC=N runs N processes with torchrun (scripts/dist_train.sh).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
if [ "${NPROC:-1}" -gt 1 ]; then
    exec bash scripts/dist_train.sh "$NPROC" configs/modelnet40/pointmae.yaml run.dir=runs/modelnet40/pointmae "$@"
fi
exec python -m pointdr2 train configs/modelnet40/pointmae.yaml run.dir=runs/modelnet40/pointmae "$@"
