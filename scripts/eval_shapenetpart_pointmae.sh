#!/usr/bin/env bash
# Evaluate pointmae on shapenetpart (configs/shapenetpart/pointmae.yaml); options as scripts/eval.sh.
exec bash "$(dirname "$0")/eval.sh" configs/shapenetpart/pointmae.yaml "$@"
