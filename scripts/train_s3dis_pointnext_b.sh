#!/usr/bin/env bash
# Train pointnext-b on s3dis (configs/s3dis/pointnext-b.yaml); options as scripts/train.sh.
exec bash "$(dirname "$0")/train.sh" configs/s3dis/pointnext-b.yaml "$@"
