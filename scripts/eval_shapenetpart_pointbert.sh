#!/usr/bin/env bash
# Evaluate pointbert on shapenetpart (configs/shapenetpart/pointbert.yaml); options as scripts/eval.sh.
exec bash "$(dirname "$0")/eval.sh" configs/shapenetpart/pointbert.yaml "$@"
