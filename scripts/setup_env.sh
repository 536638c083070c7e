#!/usr/bin/env bash
# Create (or refresh) the pointdr2 environment. Idempotent: a second run with nothing changed takes seconds.
#
#   POINTDR2_ENV=auto|venv|conda   auto (default): conda/mamba when present, otherwise a venv with pip
#   POINTDR2_VENV=DIR              venv location (default: .venv in the repository)
#   POINTDR2_TORCH="torch==2.13.0" the torch requirement installed first (before anything can pull a CUDA build)
#   POINTDR2_TORCH_INDEX=URL       optional index for that torch (e.g. https://download.pytorch.org/whl/cpu)
#   POINTDR2_EXTRAS=dev,viz        pip extras to install
#
# As root on Debian/Ubuntu it also installs the system libraries Open3D needs (libusb; Mesa EGL and Vulkan for
# headless rendering).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
say() { printf '[setup_env] %s\n' "$*" >&2; }

# --- system packages (root only; skipped silently elsewhere) ---------------------------------------------
APT_PKGS="libusb-1.0-0 libegl1 libgl1 libegl-mesa0 libgl1-mesa-dri libglx-mesa0 libvulkan1 mesa-vulkan-drivers"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && command -v dpkg >/dev/null 2>&1; then
    missing=""
    for p in $APT_PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
    if [ -n "$missing" ]; then
        say "apt-get install:$missing"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
    fi
elif [ "$(id -u)" != 0 ]; then
    say "not root: skipping system packages (Open3D needs: $APT_PKGS)"
fi

EXTRAS=${POINTDR2_EXTRAS:-dev,viz}
MODE=${POINTDR2_ENV:-auto}
CONDA=""
for c in mamba conda; do command -v "$c" >/dev/null 2>&1 && { CONDA=$c; break; }; done
if [ "$MODE" = auto ]; then MODE=$([ -n "$CONDA" ] && echo conda || echo venv); fi

stamp_of() { cat pyproject.toml environment.yml | sha256sum | cut -c1-16; }

if [ "$MODE" = conda ]; then
    [ -n "$CONDA" ] || { say "POINTDR2_ENV=conda but neither mamba nor conda is on PATH"; exit 1; }
    if ! "$CONDA" env list | awk '{print $1}' | grep -qx pointdr2; then
        say "creating conda environment 'pointdr2' from environment.yml"
        "$CONDA" env create -q -f environment.yml
    fi
    stamp="$("$CONDA" run -n pointdr2 python -c 'import sys; print(sys.prefix)')/.pointdr2-installed"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$(stamp_of)" ]; then
        "$CONDA" run -n pointdr2 python -m pip install -q -e ".[$EXTRAS]"
        stamp_of > "$stamp"
    fi
    say "ready: conda environment 'pointdr2'"
    exit 0
fi

VENV=${POINTDR2_VENV:-$ROOT/.venv}
if [ ! -x "$VENV/bin/python" ]; then
    say "creating venv $VENV"
    python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
stamp="$VENV/.pointdr2-installed"
if [ "$(cat "$stamp" 2>/dev/null)" != "$(stamp_of)" ]; then
    if ! "$PY" -c "import torch" >/dev/null 2>&1; then
        TORCH=${POINTDR2_TORCH:-torch==2.13.0}
        say "pip install $TORCH"
        if [ -n "${POINTDR2_TORCH_INDEX:-}" ]; then
            "$PY" -m pip install -q "$TORCH" --index-url "$POINTDR2_TORCH_INDEX"
        else
            "$PY" -m pip install -q "$TORCH"
        fi
    fi
    say "pip install -e .[$EXTRAS]"
    "$PY" -m pip install -q -e ".[$EXTRAS]"
    stamp_of > "$stamp"
fi
say "ready: $VENV"
