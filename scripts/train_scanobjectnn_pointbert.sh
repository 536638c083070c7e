#!/usr/bin/env bash
# Train pointbert on scanobjectnn (configs/scanobjectnn/pointbert.yaml); options as scripts/train.sh.
exec bash "$(dirname "$0")/train.sh" configs/scanobjectnn/pointbert.yaml "$@"
