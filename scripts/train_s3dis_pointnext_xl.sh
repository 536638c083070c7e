#!/usr/bin/env bash
# Train pointnext-xl on s3dis (configs/s3dis/pointnext-xl.yaml); options as scripts/train.sh.
exec bash "$(dirname "$0")/train.sh" configs/s3dis/pointnext-xl.yaml "$@"
