#!/usr/bin/env bash
# Evaluate pointnext-s part segmentation on shapenetpart (configs/shapenetpart/pointnext-s.yaml; C=64 / C=160:
# configs/shapenetpart/pointnext-s_c64.yaml / pointnext-s_c160.yaml, or model.width=64 / 160); options as scripts/eval.sh.
exec bash "$(dirname "$0")/eval.sh" configs/shapenetpart/pointnext-s.yaml "$@"
