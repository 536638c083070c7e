#!/usr/bin/env bash
# Evaluate pointmae on scanobjectnn (configs/scanobjectnn/pointmae.yaml); options as scripts/eval.sh.
exec bash "$(dirname "$0")/eval.sh" configs/scanobjectnn/pointmae.yaml "$@"
