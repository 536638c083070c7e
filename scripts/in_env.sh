#!/usr/bin/env bash
# Run a command inside the pointdr2 environment, creating it first if needed:
#   bash scripts/in_env.sh pointdr2 info
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
MODE=${POINTDR2_ENV:-auto}
if [ "$MODE" = auto ]; then
    MODE=venv
    for c in mamba conda; do command -v "$c" >/dev/null 2>&1 && { MODE=conda; break; }; done
fi
if [ "$MODE" = conda ]; then
    exec conda run --no-capture-output -n pointdr2 "$@"
fi
VENV=${POINTDR2_VENV:-$ROOT/.venv}
export PATH="$VENV/bin:$PATH" VIRTUAL_ENV="$VENV"
exec "$@"
