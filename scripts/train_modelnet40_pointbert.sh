#!/usr/bin/env bash
# Train pointbert on modelnet40 (configs/modelnet40/pointbert.yaml); options as scripts/train.sh.
exec bash "$(dirname "$0")/train.sh" configs/modelnet40/pointbert.yaml "$@"
