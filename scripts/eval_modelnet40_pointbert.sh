#!/usr/bin/env bash
# Evaluate pointbert on modelnet40 (configs/modelnet40/pointbert.yaml); options as scripts/eval.sh.
exec bash "$(dirname "$0")/eval.sh" configs/modelnet40/pointbert.yaml "$@"
