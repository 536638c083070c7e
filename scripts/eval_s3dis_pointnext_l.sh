#!/usr/bin/env bash
# Evaluate pointnext-l on s3dis (configs/s3dis/pointnext-l.yaml); options as scripts/eval.sh.
exec bash "$(dirname "$0")/eval.sh" configs/s3dis/pointnext-l.yaml "$@"
