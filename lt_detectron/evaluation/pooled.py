"""Pooled AP (Dave et al. 2021, "Evaluating Large-Vocabulary Object Detectors: The Devil is in the
Details", AP-pool).

Matching is the LVIS protocol's, unchanged: per image and category, with the federated rules
(detections of a class neither verified present nor in the image's ``neg_category_ids`` are not
evaluated; unmatched detections of a class in ``not_exhaustive_category_ids`` are ignored). Only
the accumulation differs: the detections of every category in a pool (all classes, or one
frequency band r/c/f) are ranked together by score and one precision/recall curve is computed from
their true and false positives against all the pool's non-ignored ground truth. Pooled AP is the
mean of that curve's interpolated precision over the IoU thresholds and 101 recall points, area
"all" only (the authors' default). It therefore depends on how scores compare *across* classes,
which per-class AP does not.

Ties in score are ranked in (image id, category id) order, then in the order the protocol lists the
detections of one image and category (score-sorted), as the authors' accumulation does.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Iterable, List, Mapping, Sequence

import numpy as np

from .common import gc_paused

__all__ = ["POOLS", "pooled_precision", "pooled_ap", "eval_img_arrays"]

POOLS = ("all", "r", "c", "f")


def eval_img_arrays(entry: Mapping) -> tuple:
    """``(image_id, category_id, dt_scores (D,), dt_matched (T, D) bool, dt_ignore (T, D) bool,
    gt_ignore (G,) bool)`` of one per-image, per-category evaluation record (lvis-api's
    ``eval_imgs`` item or hotcoco's ``eval_imgs`` item)."""
    if "dtScores" in entry:  # hotcoco (pycocotools spelling)
        scores, ignore, gt_ignore = entry["dtScores"], entry["dtIgnore"], entry["gtIgnore"]
        matched = (
            entry["dtMatched"] if "dtMatched" in entry else np.asarray(entry["dtMatches"]) != 0
        )
    else:  # lvis-api
        scores, ignore, gt_ignore = entry["dt_scores"], entry["dt_ignore"], entry["gt_ignore"]
        matched = np.asarray(entry["dt_matches"]) != 0
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    d = scores.size
    matched = np.asarray(matched, dtype=bool).reshape(-1, d) if d else np.zeros((0, 0), bool)
    ignore = np.asarray(ignore, dtype=bool).reshape(-1, d) if d else np.zeros((0, 0), bool)
    return (
        int(entry["image_id"]),
        int(entry["category_id"]),
        scores,
        matched,
        ignore,
        np.asarray(gt_ignore, dtype=bool).reshape(-1),
    )


def pooled_precision(
    records: Sequence[tuple], num_iou_thrs: int, rec_thrs: np.ndarray
) -> np.ndarray:
    """``(T, R)`` interpolated precision of one pool; all ``-1`` when the pool has no ground truth.

    ``records``: the pool's :func:`eval_img_arrays` tuples (area "all"), any order.
    """
    rec_thrs = np.asarray(rec_thrs, dtype=np.float64)
    precision = -np.ones((num_iou_thrs, len(rec_thrs)))
    records = sorted(records, key=lambda r: (r[0], r[1]))  # (image, category) order
    num_gt = int(sum(np.count_nonzero(~r[5]) for r in records))
    if not records or num_gt == 0:
        return precision
    scores = np.concatenate([r[2] for r in records])
    matched = np.concatenate([r[3].reshape(num_iou_thrs, -1) for r in records], axis=1)
    ignore = np.concatenate([r[4].reshape(num_iou_thrs, -1) for r in records], axis=1)
    order = np.argsort(-scores, kind="mergesort")
    matched, ignore = matched[:, order], ignore[:, order]
    tp_sum = np.cumsum(matched & ~ignore, axis=1).astype(np.float64)
    fp_sum = np.cumsum(~matched & ~ignore, axis=1).astype(np.float64)
    for t in range(num_iou_thrs):
        tp, fp = tp_sum[t], fp_sum[t]
        rc = tp / num_gt
        pr = tp / (fp + tp + np.spacing(1))
        pr = np.maximum.accumulate(pr[::-1])[::-1]  # precision envelope (max to the right)
        idx = np.searchsorted(rc, rec_thrs, side="left")
        q = np.zeros(len(rec_thrs))
        ok = idx < len(pr)
        q[ok] = pr[idx[ok]]
        precision[t] = q
    return precision


def pooled_ap(
    entries: Iterable[Mapping],
    frequency_by_cat: Mapping[int, str],
    num_iou_thrs: int,
    rec_thrs: np.ndarray,
    pools: Sequence[str] = POOLS,
) -> Dict[str, float]:
    """``{"APpool": .., "APpool-r": .., "APpool-c": .., "APpool-f": ..}`` in [0, 1] (nan: no GT).

    Args:
        entries: the protocol's per-image, per-category records of area "all" (``None`` skipped).
        frequency_by_cat: category id -> LVIS frequency band ("r", "c", "f").
        num_iou_thrs, rec_thrs: the protocol's IoU thresholds count and recall thresholds.
        pools: which of ``("all", "r", "c", "f")``.
    """
    by_pool: Dict[str, List[tuple]] = {p: [] for p in pools}
    with gc_paused():
        records = [eval_img_arrays(e) for e in entries if e is not None]
    for rec in records:
        if "all" in by_pool:
            by_pool["all"].append(rec)
        band = frequency_by_cat.get(rec[1])
        if band in by_pool and band != "all":
            by_pool[band].append(rec)
    out = OrderedDict()
    for p in pools:
        prec = pooled_precision(by_pool[p], num_iou_thrs, rec_thrs)
        valid = prec > -1
        out["APpool" if p == "all" else f"APpool-{p}"] = (
            float(prec[valid].mean()) if valid.any() else float("nan")
        )
    return out
