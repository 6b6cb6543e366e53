"""The COCO-LT training split (BAGS, Li et al. CVPR 2020, appendix 7.4) from COCO train2017.

    python datasets/prepare_coco_lt.py \
        --coco-json $DETECTRON2_DATASETS/coco/annotations/instances_train2017.json \
        --output $DETECTRON2_DATASETS/coco/annotations/coco_lt_train.json --seed 0

(``datasets/prepare_coco_lt.py`` is the command; this module is the builder it calls.)

Recipe:
1. Sort COCO's categories and LVIS v0.5's 1230 categories by training instance count
   (descending; ties by category id).
2. Align COCO rank i with LVIS rank round(i * (L-1) / (C-1)) (i.e. round(i*1229/79) for
   80 COCO classes): evenly spaced LVIS ranks. The aligned LVIS count is the COCO class's
   target (targets sum to 64,295; the paper reports 64,504 instances).
3. Visit classes from the smallest target up; for each, visit the images that contain it
   in a seeded random order and add an image while the class is below its target. An added
   image keeps as many of its instances as possible: an instance is ignored only when its
   class already has its target.

Departures (the paper gives no more detail): the visiting order in step 3; crowd
annotations (``iscrowd=1``) are not training instances, are not counted and are dropped;
ignored instances are removed from the json (Detectron2 drops crowd boxes from training
targets anyway, so marking them crowd would change nothing); a class whose COCO
count is below its target keeps all its instances (achieved < target, reported).
The output's categories carry ``instance_count``/``image_count`` (achieved), which the
class-statistics registry reads. Achieved vs target counts are printed and saved as csv
next to the output.

LVIS v0.5 per-category training instance counts are read from the shipped table
``lt_detectron/data/stats/lvis_v0.5_train.csv`` (LVIS annotations, CC BY 4.0,
https://www.lvisdataset.org; see that folder's README).
"""

from __future__ import annotations

import csv
from collections import defaultdict
from typing import Dict, List, Sequence

import numpy as np

from .lvis_stats import shipped_stats_path

LVIS_V05_COUNTS_CSV = str(shipped_stats_path("lvis_v0.5_train"))

__all__ = ["load_lvis_counts", "compute_targets", "build_coco_lt", "check_coco_input", "InputError"]

COCO_ANNOTATIONS_URL = "http://images.cocodataset.org/annotations/annotations_trainval2017.zip"
# the 80 COCO category ids (1..90 with gaps), as in instances_train2017.json
COCO_IDS = tuple(i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83))


class InputError(ValueError):
    """The input of the COCO-LT builder is missing or is not COCO (the message says what to do)."""


def check_coco_input(coco, path: str = "<json>") -> None:
    """``coco`` must be COCO instances json: 80 categories with COCO's ids, no LVIS fields."""
    if not isinstance(coco, dict) or not all(
        k in coco for k in ("images", "annotations", "categories")
    ):
        raise InputError(
            f"{path} is not a COCO instances json (needs 'images', 'annotations' and 'categories')"
        )
    cats = coco["categories"]
    if any("frequency" in c for c in cats) or any(
        "neg_category_ids" in im for im in coco["images"][:100]
    ):
        raise InputError(
            f"{path} is an LVIS-format json ({len(cats)} categories with 'frequency'): COCO-LT is built from "
            f"COCO's instances_train2017.json (80 classes). Pass --coco-json "
            f"$DETECTRON2_DATASETS/coco/annotations/instances_train2017.json"
        )
    ids = tuple(sorted(c["id"] for c in cats))
    if ids != COCO_IDS:
        raise InputError(
            f"{path} has {len(ids)} categories with ids {ids[:5]}...: COCO-LT is built from COCO's 80 classes "
            f"(ids 1..90 with gaps). Pass COCO's instances_train2017.json"
        )


def load_lvis_counts(path: str = LVIS_V05_COUNTS_CSV) -> List[int]:
    """Per-category training instance counts of LVIS v0.5 (1230 values)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    return [int(r["instance_count"]) for r in rows]


def compute_targets(coco_counts: Dict[int, int], lvis_counts: Sequence[int]):
    """Target per COCO category id, plus the COCO rank and the aligned LVIS rank of each.

    Returns ``{cat_id: (coco_rank, lvis_rank, target)}``.
    """
    if len(coco_counts) < 2:
        raise ValueError("need at least 2 COCO categories")
    if len(lvis_counts) < len(coco_counts):
        raise ValueError("need at least as many LVIS counts as COCO categories")
    coco_sorted = sorted(coco_counts, key=lambda c: (-coco_counts[c], c))
    lvis_sorted = sorted(lvis_counts, reverse=True)
    C, L = len(coco_sorted), len(lvis_sorted)
    out = {}
    for i, cid in enumerate(coco_sorted):
        j = int(
            round(i * (L - 1) / (C - 1))
        )  # Python's round: ties to even; never a tie for 80/1230
        out[cid] = (i, j, int(lvis_sorted[j]))
    return out


def build_coco_lt(coco: dict, lvis_counts: Sequence[int], seed: int = 0):
    """Sample the COCO-LT split. Returns (output json dict, report rows)."""
    cats = sorted(coco["categories"], key=lambda c: c["id"])
    anns_by_img: Dict[int, list] = defaultdict(list)
    imgs_by_cat: Dict[int, set] = defaultdict(set)
    available = {c["id"]: 0 for c in cats}
    for a in coco["annotations"]:
        if a.get("iscrowd", 0):
            continue
        if a["category_id"] not in available:
            raise ValueError(
                f"annotation {a.get('id')} has category_id {a['category_id']} missing from categories"
            )
        anns_by_img[a["image_id"]].append(a)
        imgs_by_cat[a["category_id"]].add(a["image_id"])
        available[a["category_id"]] += 1
    targets = compute_targets(available, lvis_counts)
    rng = np.random.default_rng(seed)
    counts = {c["id"]: 0 for c in cats}
    selected: Dict[int, list] = {}
    order = sorted(targets, key=lambda c: (targets[c][2], c))  # smallest target first
    for cid in order:
        target = targets[cid][2]
        if counts[cid] >= target:
            continue
        cand = np.array(sorted(imgs_by_cat[cid]), dtype=np.int64)
        cand = cand[rng.permutation(len(cand))]
        for img_id in cand.tolist():
            if counts[cid] >= target:
                break
            if img_id in selected:
                continue
            kept = []
            for a in anns_by_img[img_id]:
                k = a["category_id"]
                if counts[k] < targets[k][2]:
                    counts[k] += 1
                    kept.append(a)
            selected[img_id] = kept
    img_ids = sorted(selected)
    images_by_id = {im["id"]: im for im in coco["images"]}
    out_anns = [a for i in img_ids for a in sorted(selected[i], key=lambda a: a["id"])]
    img_count = defaultdict(set)
    for a in out_anns:
        img_count[a["category_id"]].add(a["image_id"])
    out_cats = []
    report = []
    for c in cats:
        cc = dict(c)
        cc["instance_count"] = counts[c["id"]]
        cc["image_count"] = len(img_count[c["id"]])
        out_cats.append(cc)
        rank, lrank, target = targets[c["id"]]
        report.append(
            {
                "id": c["id"],
                "name": c["name"],
                "coco_rank": rank,
                "lvis_rank": lrank,
                "target": target,
                "achieved": counts[c["id"]],
                "available": available[c["id"]],
                "images": cc["image_count"],
            }
        )
    report.sort(key=lambda r: r["coco_rank"])
    out = {
        "info": dict(
            coco.get("info", {}),
            description="COCO-LT train (BAGS recipe) built by datasets/prepare_coco_lt.py",
            coco_lt_seed=seed,
        ),
        "licenses": coco.get("licenses", []),
        "images": [images_by_id[i] for i in img_ids],
        "annotations": out_anns,
        "categories": out_cats,
    }
    return out, report
