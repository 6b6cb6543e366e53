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

Speed and memory: the per-image records are flattened once into a few arrays (the match and ignore
flags of all records as one byte array, in the layout the records list them: no per-record NumPy
arrays, no transpose), ranked once for all pools (a pool's ranking is the global one restricted to
its detections, which keeps the tie order), one IoU threshold at a time (arrays of ``N``, not
``T x N``), and each curve is read at its true positives only; the records themselves can be
dropped as soon as they are read.
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
    det_record: np.ndarray  # (N,) int64, the record of each detection (non-decreasing)
    scores: np.ndarray  # (N,) float64
    # (T * N,) uint8, record by record the (T, D_r) block of its detections (the layout the
    # protocol lists them in, so no transpose): 0 false positive, 1 true positive (matched), 2 or 3
    # ignored (unmatched / matched)
    flags: np.ndarray


def _keys(entry: Mapping):
    """(scores, matched-or-match-ids, ignore, gt_ignore) of a record: hotcoco spells them as
    pycocotools (``dtScores``...), lvis-api with underscores."""
    if "dtScores" in entry:
        m = entry["dtMatched"] if "dtMatched" in entry else entry["dtMatches"]
        return entry["dtScores"], m, entry["dtIgnore"], entry["gtIgnore"]
    return entry["dt_scores"], entry["dt_matches"], entry["dt_ignore"], entry["gt_ignore"]


def _flag_error(got: int, want: int, record: int) -> ValueError:
    return ValueError(
        f"pooled AP: record {record} (in image id, category id order) holds {got} match or ignore "
        f"flags for {want} (IoU thresholds x detections); each record needs one row of flags per "
        "IoU threshold, as long as its dtScores"
    )


def _blocks(parts, which: int, lengths: np.ndarray, T: int) -> np.ndarray:
    """Every record's ``(T, D_r)`` block ``which`` as one flat bool array (match ids: nonzero =
    matched). Rows of Python bools or 0/1 ints (hotcoco) go through ``bytes`` (one C pass, several
    times faster than iterating them; a record whose rows are all false, most of them for the ignore
    flags, is only scanned); anything else (lvis-api's arrays) through NumPy."""
    want = T * lengths
    if parts and isinstance(parts[0][which], list):
        pieces, sizes = [], []
        try:
            for p in parts:
                rows = p[which]
                sizes.append(sum(map(len, rows)))
                if any(map(any, rows)):
                    pieces += map(bytes, rows)
                else:
                    pieces.append(bytes(sizes[-1]))
            raw = b"".join(pieces)
        except (TypeError, ValueError):  # float match ids, values outside 0..255
            raw = None
        del pieces
        if raw is not None:
            bad = np.flatnonzero(np.asarray(sizes, np.int64) != want)
            if len(bad):
                raise _flag_error(sizes[bad[0]], int(want[bad[0]]), int(bad[0]))
            return np.frombuffer(raw, np.uint8) != 0
    flat = []
    for r, p in enumerate(parts):
        try:
            block = np.asarray(p[which]).ravel()
        except ValueError:  # rows of different lengths
            block = np.concatenate([np.asarray(row).ravel() for row in p[which]])
        if block.size != want[r]:
            raise _flag_error(block.size, int(want[r]), r)
        flat.append(block)
    return np.concatenate(flat) != 0 if flat else np.zeros(0, bool)


def stack_records(entries: Iterable[Mapping], num_iou_thrs: int) -> PooledRecords:
    """Flatten the protocol's records of area "all" (hotcoco's or lvis-api's ``eval_imgs`` items;
    ``None`` skipped) into :class:`PooledRecords`."""
    T = int(num_iou_thrs)
    with gc_paused():
        recs = [e for e in entries if e is not None]
        imgs = np.fromiter((e["image_id"] for e in recs), np.int64, len(recs))
        cats = np.fromiter((e["category_id"] for e in recs), np.int64, len(recs))
        d_img, d_cat = np.diff(imgs), np.diff(cats)
        if ((d_img < 0) | ((d_img == 0) & (d_cat < 0))).any():  # hotcoco lists them in order
            perm = np.lexsort((cats, imgs))  # stable: records of equal keys keep their order
            recs, cats = [recs[i] for i in perm], cats[perm]
        del imgs, d_img, d_cat
        parts = [_keys(e) for e in recs]
        del recs
        lengths = np.fromiter((len(p[0]) for p in parts), np.int64, len(parts))
        bad = [
            (k, len(p[1]), len(p[2]))
            for k, p in enumerate(parts)
            if (len(p[1]), len(p[2])) != (T, T) and (lengths[k] or len(p[1]) or len(p[2]))
        ]
        if bad:
            raise ValueError(
                f"pooled AP: a record holds {bad[0][1]} rows of match flags and {bad[0][2]} of "
                f"ignore flags for {T} IoU thresholds; pass the protocol's number of IoU thresholds"
            )
        N = int(lengths.sum())
        scores = np.fromiter(chain.from_iterable(p[0] for p in parts), np.float64, N)
        flags = _blocks(parts, 1, lengths, T).view(np.uint8)
        flags |= _blocks(parts, 2, lengths, T).view(np.uint8) << 1
        gt_len = np.fromiter((len(p[3]) for p in parts), np.int64, len(parts))
        gt_ignore = np.fromiter(chain.from_iterable(p[3] for p in parts), bool)
        del parts
    R = len(lengths)
    gt_rec = np.repeat(np.arange(R), gt_len)
    num_gt = np.bincount(gt_rec, weights=~gt_ignore, minlength=R).astype(np.int64)
    det_record = np.repeat(np.arange(R), lengths)
    return PooledRecords(cats, num_gt, det_record, scores, flags)


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
        np.concatenate([p.flags for p in parts]),
    )


def _curve(pos: np.ndarray, val: np.ndarray, num_gt: int, rec_thrs: np.ndarray) -> np.ndarray:
    """Interpolated precision at ``rec_thrs`` of one pool and IoU threshold, ``num_gt > 0``, from
    its detections that are not false positives: ``pos`` their places in the pool's ranking
    (ascending), ``val`` their flags (1 true positive, >= 2 ignored).

    Only the true positives are visited: the k-th one, with ``i_k`` ignored detections ranked before
    it, has ``f_k = pos - i_k - (k - 1)`` false positives before it, recall ``k / num_gt`` and
    precision ``k / (k + f_k)``, the very floats of the full curve there; elsewhere the curve's
    precision is never above that of the true positive before it (same ``k``, as many or more false
    positives; 0 before the first), so its envelope (the maximum to the right) at the first point
    reaching a recall threshold, a true positive, is the maximum over the true positives from there
    on."""
    ignored = val >= 2  # ignored detections move neither count
    tp = ~ignored
    ign_before = (np.cumsum(ignored) - ignored)[tp]
    pos = pos[tp]
    k = np.arange(1, len(pos) + 1)
    fp = pos - ign_before - (k - 1)
    rc = k / num_gt
    pr = k / (fp + k + np.spacing(1))
    pr = np.maximum.accumulate(pr[::-1])[::-1]
    idx = np.searchsorted(rc, rec_thrs, side="left")
    q = np.zeros(len(rec_thrs))
    ok = idx < len(pr)
    q[ok] = pr[idx[ok]]
    return q


def pooled_precision(
    tp: np.ndarray, fp: np.ndarray, num_gt: int, rec_thrs: np.ndarray
) -> np.ndarray:
    """``(T, R)`` interpolated precision of one pool from its ranked ``(T, N)`` true / false
    positive flags (ignored detections neither); all ``-1`` when the pool has no ground truth."""
    rec_thrs = np.asarray(rec_thrs, dtype=np.float64)
    tp, fp = np.asarray(tp, bool), np.asarray(fp, bool)
    if num_gt == 0:
        return -np.ones((tp.shape[0], len(rec_thrs)))
    flags = np.where(tp, 1, np.where(fp, 0, 2)).astype(np.uint8)
    return np.stack([_curve(np.flatnonzero(row), row[row != 0], num_gt, rec_thrs) for row in flags])


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
    T, N, R = int(num_iou_thrs), len(recs.scores), len(recs.category_ids)
    if recs.flags.size != T * N:
        raise ValueError(
            f"pooled AP: the records hold {recs.flags.size} flags for {T} IoU thresholds x {N} "
            "detections; pass the protocol's number of IoU thresholds"
        )
    rec_thrs = np.asarray(rec_thrs, dtype=np.float64)
    order = np.argsort(-recs.scores, kind="stable")  # ties: (image, category), then listed order
    rec = recs.det_record[order]
    length = np.bincount(recs.det_record, minlength=R)
    start = np.cumsum(length) - length
    # flags of the ranked detections at threshold t: index + t * step in the record-major blocks
    index = order + (T - 1) * start[rec]  # T * start + (position in the record)
    step = length[rec]
    del length, start
    band = np.array([frequency_by_cat.get(int(c), "") for c in recs.category_ids], dtype=object)
    # the pool (band) of each ranked detection, and its place in that pool's ranking
    bands = sorted({p for p in pools if p != "all"})
    code = np.full(R, -1, np.int8)
    for i, b in enumerate(bands):
        code[band == b] = i
    det_code = code[rec]
    place = np.empty(N, np.int64)
    for i in range(len(bands)):
        members = det_code == i
        place[members] = np.arange(np.count_nonzero(members))
    names = ["APpool" if p == "all" else f"APpool-{p}" for p in pools]
    which = [-1 if p == "all" else bands.index(p) for p in pools]
    num_gt = [int((recs.num_gt if w < 0 else recs.num_gt[code == w]).sum()) for w in which]
    prec = [np.empty((T, len(rec_thrs))) for _ in pools]
    del rec, code, band
    ranked = np.empty(N, np.uint8)
    for t in range(T):
        if t:
            index += step  # the next row of every record's block
        np.take(recs.flags, index, out=ranked)
        nz = np.flatnonzero(ranked)  # true positives and ignored (few), in ranked order
        val, nz_code = ranked[nz], det_code[nz]
        for k, w in enumerate(which):
            if num_gt[k] and w < 0:
                prec[k][t] = _curve(nz, val, num_gt[k], rec_thrs)
            elif num_gt[k]:
                sel = nz_code == w
                prec[k][t] = _curve(place[nz[sel]], val[sel], num_gt[k], rec_thrs)
    # a pool with ground truth has every (T, R) entry valid; none: nan
    return OrderedDict(
        (n, float(p.mean()) if g else float("nan")) for n, p, g in zip(names, prec, num_gt)
    )
