#!/usr/bin/env python
"""Build the COCO-LT training split (BAGS, Li et al. CVPR 2020, appendix 7.4) from COCO train2017.

    python datasets/prepare_coco_lt.py \
        --coco-json $DETECTRON2_DATASETS/coco/annotations/instances_train2017.json \
        --output $DETECTRON2_DATASETS/coco/annotations/coco_lt_train.json --seed 0

Writes the json and, next to it, ``<output>_counts.csv`` (target vs achieved count per class). The
recipe and its departures from the paper are documented in ``lt_detectron/data/coco_lt.py``, the
builder this command calls.
"""

import argparse
import csv
import json
import os
import sys
from typing import Optional, Sequence

from lt_detectron.data.coco_lt import (
    COCO_ANNOTATIONS_URL,
    LVIS_V05_COUNTS_CSV,
    InputError,
    build_coco_lt,
    check_coco_input,
    load_lvis_counts,
)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--coco-json", required=True, help="COCO instances_train2017.json")
    ap.add_argument(
        "--output", required=True, help="output json (e.g. coco/annotations/coco_lt_train.json)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--lvis-counts",
        default=LVIS_V05_COUNTS_CSV,
        help="csv with an instance_count column (LVIS v0.5 train)",
    )
    args = ap.parse_args(argv)
    src = os.path.abspath(args.coco_json)
    if not os.path.isfile(src):
        raise SystemExit(
            f"error: --coco-json {src} does not exist. Get COCO's annotations ({COCO_ANNOTATIONS_URL}) and unzip "
            f"them into $DETECTRON2_DATASETS/coco/ (giving coco/annotations/instances_train2017.json)."
        )
    if not os.path.isfile(args.lvis_counts):
        raise SystemExit(
            f"error: --lvis-counts {os.path.abspath(args.lvis_counts)} does not exist (the shipped "
            f"lt_detectron/data/stats/lvis_v0.5_train.csv is the default)"
        )
    try:
        with open(src) as f:
            coco = json.load(f)
        check_coco_input(coco, src)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SystemExit(
            f"error: {src} is not valid json ({e}); re-download it ({COCO_ANNOTATIONS_URL})"
        )
    except InputError as e:
        raise SystemExit(f"error: {e}")
    out, report = build_coco_lt(coco, load_lvis_counts(args.lvis_counts), seed=args.seed)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(out, f)
    stats_path = os.path.splitext(args.output)[0] + "_counts.csv"
    with open(stats_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(report[0]))
        w.writeheader()
        w.writerows(report)
    print(f"{'rank':>4} {'lvis':>5} {'target':>7} {'achieved':>8} {'available':>9}  name")
    for r in report:
        print(
            f"{r['coco_rank']:>4} {r['lvis_rank']:>5} {r['target']:>7} {r['achieved']:>8} "
            f"{r['available']:>9}  {r['name']}"
        )
    tt = sum(r["target"] for r in report)
    ta = sum(r["achieved"] for r in report)
    print(
        f"images: {len(out['images'])}  instances: achieved {ta} / target {tt}  -> {args.output}\ncounts: {stats_path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
