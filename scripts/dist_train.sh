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
if ! [[ "$NPROC" =~ ^[1-9][0-9]*$ ]]; then
    echo "$0: error: NPROC must be a positive integer (processes per node), got '$NPROC'" >&2
    exit 2
fi
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
NNODES=${NNODES:-1}
# A wrong key, a missing dataset or a batch that does not split over the processes is found here, in
# one process, before any is spawned: one error line and exit 2 instead of one per rank and a torchrun
# traceback. POINTDR2_SKIP_CHECK=1 skips it.
if [ "${POINTDR2_SKIP_CHECK:-0}" != 1 ]; then
    "${PYTHON:-python}" -m pointdr2 train --check --nproc "$((NPROC * NNODES))" "$@" || exit $?
fi
if [ "$NNODES" = 1 ]; then
    exec torchrun --standalone --nnodes 1 --nproc_per_node "$NPROC" -m pointdr2 train "$@"
fi
exec torchrun --nnodes "$NNODES" --node_rank "${NODE_RANK:?set NODE_RANK}" --nproc_per_node "$NPROC" \
    --master_addr "${MASTER_ADDR:?set MASTER_ADDR}" --master_port "${MASTER_PORT:-29500}" -m pointdr2 train "$@"
