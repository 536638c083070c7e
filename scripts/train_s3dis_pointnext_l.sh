#!/usr/bin/env bash
# Train pointnext-l on s3dis (configs/s3dis/pointnext-l.yaml); options as scripts/train.sh.
exec bash "$(dirname "$0")/train.sh" configs/s3dis/pointnext-l.yaml "$@"
