#!/usr/bin/env bash
# Evaluate pointnext-xl on s3dis (configs/s3dis/pointnext-xl.yaml); options as scripts/eval.sh.
exec bash "$(dirname "$0")/eval.sh" configs/s3dis/pointnext-xl.yaml "$@"
