#!/usr/bin/env bash
# Multi-process training with torchrun (NCCL on GPUs, gloo on CPU):
#   bash scripts/dist_train.sh NPROC CONFIG [key=value ...] [--resume RUN_DIR] [--force]
# NPROC processes on this machine (one per GPU). train.batch_size stays the global batch.
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR and MASTER_PORT in the environment.
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: $0 NPROC CONFIG [key=value ...] [--resume RUN_DIR] [--force]" >&2
    exit 2
fi
NPROC=$1
shift
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
NNODES=${NNODES:-1}
if [ "$NNODES" = 1 ]; then
    exec torchrun --standalone --nnodes 1 --nproc_per_node "$NPROC" -m pointdr2 train "$@"
fi
exec torchrun --nnodes "$NNODES" --node_rank "${NODE_RANK:?set NODE_RANK}" --nproc_per_node "$NPROC" \
    --master_addr "${MASTER_ADDR:?set MASTER_ADDR}" --master_port "${MASTER_PORT:-29500}" -m pointdr2 train "$@"
