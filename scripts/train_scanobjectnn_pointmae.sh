#!/usr/bin/env bash
# Train pointmae on scanobjectnn (configs/scanobjectnn/pointmae.yaml); options as scripts/train.sh.
exec bash "$(dirname "$0")/train.sh" configs/scanobjectnn/pointmae.yaml "$@"
