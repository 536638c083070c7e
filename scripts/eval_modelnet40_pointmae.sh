#!/usr/bin/env bash
# Evaluate pointmae on modelnet40 (configs/modelnet40/pointmae.yaml); options as scripts/eval.sh.
exec bash "$(dirname "$0")/eval.sh" configs/modelnet40/pointmae.yaml "$@"
