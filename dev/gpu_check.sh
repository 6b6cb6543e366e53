#!/usr/bin/env bash
# GPU check, a few minutes on one GPU, offline: class-selected mask inference against Detectron2's
# all-class masks (dev/mask_inference_check.py, each AMP mode), then one LVIS v1 config per ROI
# method, ITERS iterations each with AMP off and on, on the real-format fixtures
# (tools/make_fixtures.py: LVIS v1 jsons with the 1203 real categories, small COCO-named JPEGs, a
# random-weight ImageNet R-50 .pkl), at the configs' own input sizes. Prints s/iter (detectron2's median iteration time, metrics.json) and
# max GPU memory (detectron2's "max_mem", torch.cuda.max_memory_allocated) per run; exits 1 if any
# run failed.
#
#   bash dev/gpu_check.sh                 # all methods, AMP off and on, 20 iterations, batch 4
#   bash dev/gpu_check.sh --dry-run       # print the commands only
#   METHODS="softmax eqlv2" AMP="off" ITERS=50 BATCH=8 bash dev/gpu_check.sh
#   DEVICE=cpu ITERS=3 AMP=off SMALL=1 bash dev/gpu_check.sh   # CPU smoke run (what the tests do)
#
# Environment: PYTHON (default .venv/bin/python), WORK (default a new temporary folder), FIXTURES
# (default WORK/fixtures, generated), DEVICE (cuda), ITERS (20), BATCH (4), AMP ("off on"),
# METHODS (every registered ROI loss + fedloss), SMALL (0; 1 = 160 px inputs, 10 dets).
# The configs' own LR schedule is kept (ITERS stay inside its warm-up: random ImageNet stand-in
# weights diverge at the full learning rate); ITERS must be >= 3 (detectron2 times from the 3rd).
# BAGS is the decoupled recipe: it starts from the softmax run's model_final.pth (same AMP mode),
# so "bags" needs "softmax" before it in METHODS.
set -euo pipefail
cd "$(dirname "$0")/.."

DRY=0
for a in "$@"; do
  case "$a" in
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $a (see --help)" >&2; exit 2 ;;
  esac
done

PYTHON=${PYTHON:-.venv/bin/python}
DEVICE=${DEVICE:-cuda}
ITERS=${ITERS:-20}
BATCH=${BATCH:-4}
AMP=${AMP:-"off on"}
METHODS=${METHODS:-}
SMALL=${SMALL:-0}
WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/lt_gpu_check.XXXXXX")}
FIXTURES=${FIXTURES:-$WORK/fixtures}

# The methods and their LVIS v1 configs: every loss of lt_detectron's ROI_LOSS_REGISTRY (a new
# method is checked with no edit here) plus fedloss (sigmoid with the federated loss), softmax first
# (BAGS starts from its model); METHODS picks some of them. One "method config" line each.
PLAN=$(METHODS="$METHODS" PYTHONWARNINGS=ignore "$PYTHON" - <<'EOF'
import glob
import os
import sys

from lt_detectron.losses import ROI_LOSS_REGISTRY

known = sorted(ROI_LOSS_REGISTRY.names() + ["fedloss"], key=lambda m: (m != "softmax", m))
for m in os.environ["METHODS"].split() or known:
    if m not in known:
        sys.exit("gpu_check.sh: unknown method %s (%s)" % (m, " ".join(known)))
    pattern = "configs/lvis_v1/%s_mask_rcnn_R_50_FPN_*.yaml" % m
    found = sorted(c for c in glob.glob(pattern) if "gn_scratch" not in c)
    if not found:
        sys.exit("gpu_check.sh: no LVIS v1 config for %s: add one named %s" % (m, pattern))
    print(m, found[0])
EOF
)
mapfile -t PLAN_LINES <<< "$PLAN"

if [ "$DEVICE" = cuda ] && [ "$DRY" = 0 ]; then
  "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || { echo "gpu_check.sh: torch.cuda.is_available() is False; run on a GPU machine (or DEVICE=cpu)" >&2; exit 1; }
fi

# Class-selected mask inference == Detectron2's all-class masks on DEVICE, for each AMP mode
# (dev/mask_inference_check.py; LVIS mask head, standard and class-agnostic).
MASK_CHECK=("$PYTHON" -m dev.mask_inference_check --device "$DEVICE" --amp "$AMP")
MASK_FAILED=0
if [ "$DRY" = 1 ]; then
  printf '%q ' "${MASK_CHECK[@]}"; echo
else
  PYTHONWARNINGS=ignore "${MASK_CHECK[@]}" || MASK_FAILED=1
fi

if [ "$DRY" = 0 ] && [ ! -f "$FIXTURES/lvis/lvis_v1_val.json" ]; then
  "$PYTHON" tools/make_fixtures.py "$FIXTURES" > /dev/null
fi

RESULTS="$WORK/gpu_check.md"
FAILED=$MASK_FAILED
ROWS=()
for amp in $AMP; do
  case "$amp" in on) AMP_FLAG=True ;; off) AMP_FLAG=False ;; *) echo "gpu_check.sh: AMP must be on/off, got $amp" >&2; exit 2 ;; esac
  for line in "${PLAN_LINES[@]}"; do
    read -r m cfg <<< "$line"
    out="$WORK/${m}_amp_${amp}"
    opts=(MODEL.DEVICE "$DEVICE" SOLVER.AMP.ENABLED "$AMP_FLAG" SOLVER.IMS_PER_BATCH "$BATCH"
          SOLVER.MAX_ITER "$ITERS" SOLVER.CHECKPOINT_PERIOD 1000000 DATALOADER.NUM_WORKERS 2 TEST.EVAL_PERIOD 0
          DATASETS.TEST "()" OUTPUT_DIR "$out")
    if [ "$m" = bags ]; then
      opts+=(MODEL.WEIGHTS "$WORK/softmax_amp_${amp}/model_final.pth")
    else
      opts+=(MODEL.WEIGHTS "$FIXTURES/ImageNetPretrained/MSRA/R-50.pkl")
    fi
    if [ "$SMALL" = 1 ]; then
      opts+=(INPUT.MIN_SIZE_TRAIN "(160,)" INPUT.MAX_SIZE_TRAIN 256 DATALOADER.NUM_WORKERS 0)
    fi
    cmd=(env DETECTRON2_DATASETS="$FIXTURES" "$PYTHON" tools/train_net.py --config-file "$cfg" "${opts[@]}")
    if [ "$DRY" = 1 ]; then
      printf '%q ' "${cmd[@]}"; echo
      continue
    fi
    mkdir -p "$out"
    t0=$(date +%s)
    if "${cmd[@]}" > "$out.log" 2>&1; then rc=0; else rc=$?; fi
    wall=$(( $(date +%s) - t0 ))
    read -r s_iter max_mem < <("$PYTHON" - "$out" <<'EOF'
import json, os, re, sys
out = sys.argv[1]
s_iter = "-"
try:
    for line in open(os.path.join(out, "metrics.json")):
        rec = json.loads(line)
        if "time" in rec:
            s_iter = "%.4f" % rec["time"]
except OSError:
    pass
mem = "-"
try:
    found = re.findall(r"max_mem: (\d+)M", open(os.path.join(out, "log.txt")).read())
    mem = found[-1] if found else "-"
except OSError:
    pass
print(s_iter, mem)
EOF
)
    if [ "$rc" != 0 ] || [ "$s_iter" = "-" ]; then
      FAILED=1
      echo "FAILED: $m AMP $amp (rc $rc), tail of $out.log:" >&2
      tail -n 30 "$out.log" >&2
    fi
    row="| $m | $cfg | $amp | $rc | $s_iter | $max_mem | $wall |"
    echo "$row"
    ROWS+=("$row")
  done
done
[ "$DRY" = 1 ] && exit 0

{
  echo "| method | config | AMP | rc | s/iter | max_mem (MiB) | wall (s) |"
  echo "|---|---|---|---:|---:|---:|---:|"
  printf '%s\n' "${ROWS[@]}"
} > "$RESULTS"
echo
cat "$RESULTS"
echo "device $DEVICE, batch $BATCH, $ITERS iterations; results: $RESULTS"
exit "$FAILED"
