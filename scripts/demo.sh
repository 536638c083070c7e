#!/usr/bin/env bash
# The main job on a fresh machine: environment set-up, then pointdr2's embedded default.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/scripts/in_env.sh" pointdr2 info
exec bash "$ROOT/scripts/in_env.sh" pointdr2 bench ops --quick
