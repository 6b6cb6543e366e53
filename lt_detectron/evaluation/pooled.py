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

Speed and memory: the per-image records are flattened once into a few arrays (no per-record NumPy
arrays), ranked once for all pools (a pool's ranking is the global one restricted to its columns,
which keeps the tie order) and the records themselves can be dropped as soon as they are read.
"""

from __future__ import annotations

from collections import OrderedDict
from itertools import chain
from typing import Dict, Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from .common import gc_paused

__all__ = [
    "POOLS",
    "PooledRecords",
    "stack_records",
    "concat_records",
    "pooled_precision",
    "pooled_ap",
]

POOLS = ("all", "r", "c", "f")


class PooledRecords(NamedTuple):
    """The per-image, per-category records of one area range, flattened (``N`` detections, ``R``
    records, ``T`` IoU thresholds), records in (image id, category id) order."""

    category_ids: np.ndarray  # (R,) int64, per record
    num_gt: np.ndarray  # (R,) int64, non-ignored ground truth per record
    det_record: np.ndarray  # (N,) int64, the record of each detection
    scores: np.ndarray  # (N,) float64
    tp: np.ndarray  # (T, N) bool: matched and not ignored
    fp: np.ndarray  # (T, N) bool: unmatched and not ignored


def _keys(entry: Mapping):
    """(scores, matched-or-match-ids, is_bool, ignore, gt_ignore) of a record: hotcoco spells
    them as pycocotools (``dtScores``...), lvis-api with underscores."""
    if "dtScores" in entry:
        if "dtMatched" in entry:
            m, is_bool = entry["dtMatched"], True
        else:
            m, is_bool = entry["dtMatches"], False
        return entry["dtScores"], m, is_bool, entry["dtIgnore"], entry["gtIgnore"]
    return entry["dt_scores"], entry["dt_matches"], False, entry["dt_ignore"], entry["gt_ignore"]


def _rows(parts, which: int, t: int, dtype) -> np.ndarray:
    """Row ``t`` (one IoU threshold) of every record's ``(T, D_r)`` block ``which``, concatenated."""
    return np.fromiter(
        chain.from_iterable(p[which][t] if len(p[which]) else () for p in parts), dtype
    )


def stack_records(entries: Iterable[Mapping], num_iou_thrs: int) -> PooledRecords:
    """Flatten the protocol's records of area "all" (hotcoco's or lvis-api's ``eval_imgs`` items;
    ``None`` skipped) into :class:`PooledRecords`."""
    T = int(num_iou_thrs)
    with gc_paused():
        recs = sorted(
            (e for e in entries if e is not None),
            key=lambda e: (int(e["image_id"]), int(e["category_id"])),
        )
        cats = np.fromiter((int(e["category_id"]) for e in recs), np.int64, len(recs))
        parts = [_keys(e) for e in recs]
        del recs
        lengths = np.fromiter((len(p[0]) for p in parts), np.int64, len(parts))
        bad = [
            (k, len(p[1]), len(p[3]))
            for k, p in enumerate(parts)
            if (len(p[1]), len(p[3])) != (T, T) and (lengths[k] or len(p[1]) or len(p[3]))
        ]
        if bad:
            raise ValueError(
                f"pooled AP: a record holds {bad[0][1]} rows of match flags and {bad[0][2]} of "
                f"ignore flags for {T} IoU thresholds; pass the protocol's number of IoU thresholds"
            )
        scores = np.fromiter(chain.from_iterable(p[0] for p in parts), np.float64)
        is_bool = all(p[2] for p in parts)
        tp = np.empty((T, len(scores)), bool)
        fp = np.empty((T, len(scores)), bool)
        for t in range(T):
            if is_bool:
                matched = _rows(parts, 1, t, bool)
            else:  # match ids: 0 = unmatched
                matched = _rows(parts, 1, t, np.float64) != 0
            ignore = _rows(parts, 3, t, bool)
            tp[t] = matched & ~ignore
            fp[t] = ~matched & ~ignore
        gt_len = np.fromiter((len(p[4]) for p in parts), np.int64, len(parts))
        gt_ignore = np.fromiter(chain.from_iterable(p[4] for p in parts), bool)
        del parts
    R = len(lengths)
    gt_rec = np.repeat(np.arange(R), gt_len)
    num_gt = np.bincount(gt_rec, weights=~gt_ignore, minlength=R).astype(np.int64)
    det_record = np.repeat(np.arange(R), lengths)
    return PooledRecords(cats, num_gt, det_record, scores, tp, fp)


def concat_records(parts: Sequence[PooledRecords]) -> PooledRecords:
    """One :class:`PooledRecords` of consecutive chunks (e.g. of images in id order: the records stay
    in (image id, category id) order when the chunks are)."""
    if len(parts) == 1:
        return parts[0]
    offsets = np.cumsum([0] + [len(p.category_ids) for p in parts[:-1]])
    return PooledRecords(
        np.concatenate([p.category_ids for p in parts]),
        np.concatenate([p.num_gt for p in parts]),
        np.concatenate([p.det_record + o for p, o in zip(parts, offsets)]),
        np.concatenate([p.scores for p in parts]),
        np.concatenate([p.tp for p in parts], axis=1),
        np.concatenate([p.fp for p in parts], axis=1),
    )


def pooled_precision(
    tp: np.ndarray, fp: np.ndarray, num_gt: int, rec_thrs: np.ndarray
) -> np.ndarray:
    """``(T, R)`` interpolated precision of one pool from its ranked ``(T, N)`` true / false
    positive flags (ignored detections neither); all ``-1`` when the pool has no ground truth."""
    rec_thrs = np.asarray(rec_thrs, dtype=np.float64)
    T = tp.shape[0]
    precision = -np.ones((T, len(rec_thrs)))
    if num_gt == 0:
        return precision
    # one IoU threshold at a time (arrays of N, not T x N: 10x less transient memory); integer
    # counts (exact), so the float operations below are those of a float cumsum
    for t in range(T):
        tp_sum = np.cumsum(tp[t], dtype=np.int64)
        fp_sum = np.cumsum(fp[t], dtype=np.int64)
        rc = tp_sum / num_gt
        pr = tp_sum / (fp_sum + tp_sum + np.spacing(1))
        pr = np.maximum.accumulate(pr[::-1])[::-1]  # envelope (max to the right)
        idx = np.searchsorted(rc, rec_thrs, side="left")
        q = np.zeros(len(rec_thrs))
        ok = idx < len(pr)
        q[ok] = pr[idx[ok]]
        precision[t] = q
    return precision


def pooled_ap(
    entries,
    frequency_by_cat: Mapping[int, str],
    num_iou_thrs: int,
    rec_thrs: np.ndarray,
    pools: Sequence[str] = POOLS,
) -> Dict[str, float]:
    """``{"APpool": .., "APpool-r": .., "APpool-c": .., "APpool-f": ..}`` in [0, 1] (nan: no GT).

    Args:
        entries: the protocol's per-image, per-category records of area "all" (``None`` skipped), or
            their :func:`stack_records`.
        frequency_by_cat: category id -> LVIS frequency band ("r", "c", "f").
        num_iou_thrs, rec_thrs: the protocol's IoU thresholds count and recall thresholds.
        pools: which of ``("all", "r", "c", "f")``.
    """
    recs = entries if isinstance(entries, PooledRecords) else stack_records(entries, num_iou_thrs)
    order = np.argsort(-recs.scores, kind="stable")  # ties: (image, category), then listed order
    band = np.array([frequency_by_cat.get(int(c), "") for c in recs.category_ids], dtype=object)
    out = OrderedDict()
    for p in pools:
        in_pool = np.ones(len(band), bool) if p == "all" else band == p
        cols = order[in_pool[recs.det_record[order]]]
        num_gt = int(recs.num_gt[in_pool].sum())
        prec = pooled_precision(recs.tp[:, cols], recs.fp[:, cols], num_gt, rec_thrs)
        valid = prec > -1
        out["APpool" if p == "all" else f"APpool-{p}"] = (
            float(prec[valid].mean()) if valid.any() else float("nan")
        )
    return out
