#!/usr/bin/env bash
# Train pointmae part segmentation on shapenetpart (configs/shapenetpart/pointmae.yaml); options as scripts/train.sh.
exec bash "$(dirname "$0")/train.sh" configs/shapenetpart/pointmae.yaml "$@"
