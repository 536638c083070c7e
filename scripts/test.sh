#!/usr/bin/env bash
# The test command: environment set-up, then the whole test suite (a run that collects no test fails).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
exec bash "$ROOT/scripts/in_env.sh" python -m pytest -q "$@"
