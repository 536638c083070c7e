#!/usr/bin/env bash
# Train pointnext-s on scanobjectnn (configs/scanobjectnn/pointnext-s.yaml); options as scripts/train.sh.
exec bash "$(dirname "$0")/train.sh" configs/scanobjectnn/pointnext-s.yaml "$@"
