#!/usr/bin/env bash
# Train pointmae on modelnet40 (configs/modelnet40/pointmae.yaml); options as scripts/train.sh.
exec bash "$(dirname "$0")/train.sh" configs/modelnet40/pointmae.yaml "$@"
