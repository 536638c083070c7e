#!/usr/bin/env bash
# The main job on a fresh machine: environment set-up, then pointdr2's embedded default (pointdr2 demo):
# synthetic data in the official layouts, pretraining, Dr2Net vs conventional finetuning, memory, a PNG.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
exec bash "$ROOT/scripts/in_env.sh" pointdr2 demo "$@"
