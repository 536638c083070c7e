#!/usr/bin/env bash
# Train pointbert part segmentation on shapenetpart (configs/shapenetpart/pointbert.yaml); options as scripts/train.sh.
exec bash "$(dirname "$0")/train.sh" configs/shapenetpart/pointbert.yaml "$@"
