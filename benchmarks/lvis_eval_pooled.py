"""Pooled AP (``TEST.LT.POOLED_AP``) in ``benchmark_lvis_eval --pooled``: the authors' procedure as a
reference worker, time and peak memory.

The authors' pooled AP (large-vocab-devil, ``scripts/evaluate_ap_pooled.py``) runs lvis-api's
``LVISEval.evaluate()`` unchanged with area "all" only, then accumulates each pool (all classes,
r, c, f) over the per-image records of its categories, in image-major order, ranked by score
(stable sort), into one precision/recall curve. :func:`worker_authors_pooled` re-derives that
accumulation here (independently written, NumPy) on lvis-api's matching and times it end to end
from the result dicts (``LVIS(gt)``, ``LVISResults``, ``evaluate``, the four pools), as the lvis-api
row of the benchmark is timed.
"""

from __future__ import annotations

import time

import numpy as np

POOLED_METRICS = ("APpool", "APpool-r", "APpool-c", "APpool-f")


def _pool_ap(eval_imgs, cat_idx, num_imgs, rec_thrs):
    recs = [eval_imgs[c * num_imgs + i] for i in range(num_imgs) for c in cat_idx]
    recs = [r for r in recs if r is not None]
    if not recs:
        return float("nan")
    num_gt = sum(int(np.count_nonzero(np.asarray(r["gt_ignore"]) == 0)) for r in recs)
    if num_gt == 0:
        return float("nan")
    order = np.argsort(-np.concatenate([r["dt_scores"] for r in recs]), kind="mergesort")
    m = np.concatenate([r["dt_matches"] for r in recs], axis=1)[:, order] != 0
    ig = np.concatenate([r["dt_ignore"] for r in recs], axis=1)[:, order]
    return float(np.mean(authors_curves(m & ~ig, ~m & ~ig, num_gt, rec_thrs)))


def authors_curves(tp, fp, num_gt, rec_thrs) -> np.ndarray:
    """The authors' accumulation of one ranked pool: ``(T, N)`` true / false positives (not
    ignored) in rank order -> the ``(T, R)`` interpolated precision at the recall thresholds."""
    out = []
    for t_row, f_row in zip(
        np.cumsum(tp, axis=1).astype(np.float64), np.cumsum(fp, axis=1).astype(np.float64)
    ):
        rc = t_row / num_gt
        pr = t_row / (f_row + t_row + np.spacing(1))
        pr = np.maximum.accumulate(pr[::-1])[::-1]
        idx = np.searchsorted(rc, rec_thrs, side="left")
        q = np.zeros(len(rec_thrs))
        q[idx < len(pr)] = pr[idx[idx < len(pr)]]
        out.append(q)
    return np.array(out)


def worker_authors_pooled(gt_path, dets, max_dets=300):
    """``(seconds, {"APpool", "APpool-r", "APpool-c", "APpool-f"} in [0, 1])`` of the authors'
    procedure on box detections (``{image_id: {"boxes", "scores", "category_ids"}}``)."""
    import logging

    from lvis import LVIS, LVISEval, LVISResults

    from lt_detectron.compat import ensure_lvis_numpy_compat
    from lt_detectron.utils.testing import detections_to_results

    results = detections_to_results(dets, False)
    del dets
    ensure_lvis_numpy_compat()
    logging.disable(logging.WARNING)
    t = time.perf_counter()
    gt = LVIS(gt_path)
    E = LVISEval(gt, LVISResults(gt, results, max_dets=max_dets), "bbox")
    E.params.max_dets = max_dets
    E.params.area_rng, E.params.area_rng_lbl = E.params.area_rng[:1], E.params.area_rng_lbl[:1]
    E.evaluate()
    p = E.params
    freq = [c["frequency"] for c in gt.load_cats(p.cat_ids)]
    pools = {"APpool": range(len(freq))}
    for band in "rcf":
        pools[f"APpool-{band}"] = [k for k, f in enumerate(freq) if f == band]
    rec_thrs = np.asarray(p.rec_thrs)
    res = {k: _pool_ap(E.eval_imgs, idx, len(p.img_ids), rec_thrs) for k, idx in pools.items()}
    return time.perf_counter() - t, res
