#!/usr/bin/env bash
# The main job: set everything up (idempotent), then train and evaluate the default config
# on the embedded long-tailed dataset (lt_shapes), printing the LVIS-style result table.
#   bash tools/demo.sh                 # baseline (softmax CE)
#   bash tools/demo.sh eqlv2           # any method: softmax sigmoid eqlv2 ecm bags c2am
#   bash tools/demo.sh eqlv2 SOLVER.MAX_ITER 200   # extra config overrides
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_env.sh
method=${1:-softmax}
shift || true
cfg=configs/lt_shapes/faster_rcnn_tiny_${method}.yaml
if [ ! -f "$cfg" ]; then
  echo "unknown method '$method': choose one of $(ls configs/lt_shapes/faster_rcnn_tiny_*.yaml | sed 's/.*tiny_//; s/.yaml//' | tr '\n' ' ')" >&2
  exit 2
fi
start=$(date +%s)
.venv/bin/python tools/train_net.py --config-file "$cfg" "$@"
echo "[demo] $method: trained and evaluated in $(( $(date +%s) - start ))s; outputs in output/lt_shapes/faster_rcnn_tiny_${method}"
