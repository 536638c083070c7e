#!/usr/bin/env bash
# Evaluate pointnext-s on scanobjectnn (configs/scanobjectnn/pointnext-s.yaml); options as scripts/eval.sh.
exec bash "$(dirname "$0")/eval.sh" configs/scanobjectnn/pointnext-s.yaml "$@"
