#!/usr/bin/env bash
# The main job: set everything up (idempotent), then train and evaluate the default config
# on the embedded long-tailed dataset (lt_shapes), printing the LVIS-style result table, and
# end with pictures in the run's output folder (OUTPUT_DIR of the config):
#   plots/  method plots (every 500 iterations and final; also in TensorBoard: tensorboard --logdir OUTPUT_DIR)
#           and the final evaluation's per-class AP vs training instances and per-category AP
#   demo/   the trained model's detections on 4 val images (tools/demo.py)
#   bash tools/demo.sh                 # baseline (softmax CE)
#   bash tools/demo.sh eqlv2           # any method: softmax sigmoid eqlv1 eqlv2 ecm bags c2am
#   bash tools/demo.sh eqlv2 SOLVER.MAX_ITER 200   # extra config overrides
set -euo pipefail
cd "$(dirname "$0")/.."
bash dev/setup_env.sh
method=${1:-softmax}
shift || true
cfg=configs/lt_shapes/faster_rcnn_tiny_${method}.yaml
if [ ! -f "$cfg" ]; then
  echo "unknown method '$method': choose one of $(ls configs/lt_shapes/faster_rcnn_tiny_*.yaml | sed 's/.*tiny_//; s/.yaml//' | tr '\n' ' ')" >&2
  exit 2
fi
# OUTPUT_DIR: the config's, or the last one given on the command line
out=$(sed -n 's/^OUTPUT_DIR: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' "$cfg")
args=("$@")
for ((i = 0; i + 1 < ${#args[@]}; i++)); do
  if [ "${args[i]}" = OUTPUT_DIR ]; then out=${args[i + 1]}; fi
done
start=$(date +%s)
.venv/bin/python tools/train_net.py --config-file "$cfg" LT_HOOKS.PLOT_PERIOD 500 "$@"
trained=$(date +%s)
.venv/bin/python tools/demo.py --config-file "$cfg" --dataset lt_shapes_val --max-images 4 --scale 3 \
  --output "$out/demo" --opts "$@" > /dev/null
end=$(date +%s)
echo "[demo] $method: trained and evaluated in $((trained - start))s, demo images in $((end - trained))s; outputs in $out"
echo "[demo] pictures (TensorBoard: .venv/bin/tensorboard --logdir $out):"
ls -1 "$out"/plots/*.png "$out"/demo/*.png | sed 's/^/  /'
