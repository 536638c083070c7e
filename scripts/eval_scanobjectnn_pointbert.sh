#!/usr/bin/env bash
# Evaluate pointbert on scanobjectnn (configs/scanobjectnn/pointbert.yaml); options as scripts/eval.sh.
exec bash "$(dirname "$0")/eval.sh" configs/scanobjectnn/pointbert.yaml "$@"
