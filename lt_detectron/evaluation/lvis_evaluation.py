"""LVIS (federated protocol) evaluation for Detectron2, fast and exact.

Matching and accumulation run in ``hotcoco`` (Rust, ``lvis_style`` evaluation), which
gives lvis-api 0.5.3's metrics to the last digit (tests check |diff| <= 1e-4 on every
reported metric, box and mask) at ~50x its speed and a fraction of its memory.
``backend="lvis"`` runs lvis-api itself (the parity reference).

Protocols (``TEST.LT.AP_PROTOCOL``): ``"standard"``, the 300 highest-scoring detections per image;
``"fixed"``, Fixed AP (Dave et al. 2021): the ``TEST.LT.TOPK_PER_CLASS`` highest-scoring detections
of every class over the dataset, no per-image cap (``max_dets = -1``, as the authors'
``evaluate_ap_fixed.py``). ``pooled=True`` adds pooled AP (:mod:`.pooled`) from the same matching.

Masks: the area of a detection (small/medium/large) is its mask's, as in Detectron2's LVIS
evaluator (which drops the box of mask results) and lvis-api given mask-only results.

AP by training-instance group: ``AP[lo,hi)`` for every non-empty group of
``MODEL.LT.GROUP_EDGES`` (default ``AP[0,10) AP[10,100) AP[100,1000) AP[1000,inf)``; classes
without training instances are in the first group, classes of unknown count in none).
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections import OrderedDict
from typing import Dict, Iterator, List, Optional

import numpy as np

from ..class_stats import group_label, instance_bins
from .base import LTDatasetEvaluator
from .common import (
    detections_to_dicts,
    gc_paused,
    precision_ap,
    resolve_backend,
)
from .hotcoco_results import load_hotcoco, lvis_kept_results
from .pooled import concat_records, pooled_ap, stack_records

logger = logging.getLogger(__name__)

__all__ = ["LTLVISEvaluator", "evaluate_lvis_predictions", "LVIS_METRICS", "ar_key"]

LVIS_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")
POOLED_METRICS = ("APpool", "APpool-r", "APpool-c", "APpool-f")


def ar_key(max_dets: int) -> str:
    """The recall metric's name: ``AR@300``, or ``AR`` without a per-image cap (Fixed AP)."""
    return f"AR@{max_dets}" if max_dets >= 0 else "AR"


def evaluate_lvis_predictions(
    gt,
    dets: np.ndarray,
    rles: Optional[List[dict]],
    iou_type: str,
    max_dets: int = 300,
    backend: str = "auto",
    pooled: bool = False,
):
    """Run the LVIS protocol.

    Args:
        gt: ground-truth json path or dict.
        dets: ``(N, 7)`` detection matrix ``[image_id, x, y, w, h, score, category_id]``.
        rles: one RLE per detection (``"segm"``), else ``None``.
        iou_type: ``"bbox"`` or ``"segm"``.
        max_dets: detections kept per image (the 300 highest; lvis-api's stable tie order); ``-1``:
            no cap (Fixed AP, after the caller's top-k per class).
        backend: ``"auto"`` / ``"hotcoco"`` / ``"lvis"``.
        pooled: also compute pooled AP (``APpool``, ``APpool-r/c/f``).

    Returns:
        ``(metrics in [0, 1] with nan for undefined, precision, sorted category ids)``; precision is
        the ``(T, R, K, A)`` array (lvis-api) or, from hotcoco, its per-category ``(sums, counts)``
        (:func:`~.common.category_sums`); both give :func:`~.common.precision_ap` and
        :func:`~.common.per_category_ap`.
    """
    backend = resolve_backend(backend, "lvis")
    if iou_type == "segm" and rles is None:
        raise ValueError("segm evaluation needs masks")
    dets = np.ascontiguousarray(dets, dtype=np.float64).reshape(-1, 7)
    masks = rles if iou_type == "segm" else None
    if backend == "hotcoco":
        import hotcoco

        # lvis-api's cap, then only results of positive area; mask results carry no box (Detectron2)
        dets, masks, areas = lvis_kept_results(dets, masks, max_dets)
        G, D = load_hotcoco(gt, dets, masks, areas, lvis=True)
        E = hotcoco.COCOeval(G, D, iou_type, lvis_style=True)
        E.params.max_dets = [max_dets if max_dets >= 0 else max(len(dets), 1)]
        E.evaluate()
        E.accumulate()
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=".*max_dets differ", category=UserWarning
            )  # Fixed AP: no cap
            # the stats without hotcoco's 0-1 summary on stdout (printed from Rust, past
            # redirect_stdout; detectron2's loggers are DEBUG-enabled): the evaluator logs its table
            E.summary_lines()
        cat_ids = list(E.params.cat_ids)
        params, cats = E.params, G.cats
        res = E.get_results(per_class=True)
        precision = _sums_from_per_class(
            res, cat_ids, cats, len(params.iou_thrs), len(params.rec_thrs)
        )
        if precision is None:  # category names not unique: read the precision array (4x slower)
            precision = np.asarray(E.eval["precision"])
            if precision.ndim == 5:
                precision = precision[..., -1]
        eval_imgs = lambda: _area_all_eval_imgs(E)  # chunks of images
    else:
        from lvis import LVIS, LVISEval, LVISResults

        from ..compat import ensure_lvis_numpy_compat

        ensure_lvis_numpy_compat()
        if isinstance(gt, dict):
            lvis_gt = LVIS.__new__(LVIS)
            lvis_gt.logger = logging.getLogger("lvis.lvis")
            lvis_gt.dataset = copy.deepcopy(gt)
            lvis_gt._create_index()
        else:
            lvis_gt = LVIS(gt)
        if len(dets) == 0:  # lvis-api cannot evaluate an empty result list
            logger.warning("No detections: every AP is 0.")
            k = len(lvis_gt.get_cat_ids())
            keys = LVIS_METRICS + (ar_key(max_dets),) + (POOLED_METRICS if pooled else ())
            return (
                OrderedDict((m, 0.0) for m in keys),
                np.zeros((10, 101, k, 4)),
                sorted(lvis_gt.get_cat_ids()),
            )
        results = detections_to_dicts(dets, masks)
        if masks is not None:
            for r in results:
                r.pop("bbox")  # as Detectron2: the mask's area and box
        lvis_dt = LVISResults(lvis_gt, results, max_dets=max_dets)
        E = LVISEval(lvis_gt, lvis_dt, iou_type)
        E.params.max_dets = max_dets
        E.run()
        res = dict(E.results)
        precision = np.asarray(E.eval["precision"])
        cat_ids = list(E.params.cat_ids)
        params, cats = E.params, lvis_gt.cats
        eval_imgs = lambda: [  # one chunk: lvis-api's records exist already
            [
                e
                for e in E.eval_imgs
                if e is not None and list(e["area_rng"]) == list(params.area_rng[0])
            ]
        ]
    metrics = OrderedDict()
    for k in LVIS_METRICS:
        metrics[k] = float(res.get(k, -1))
    metrics[ar_key(max_dets)] = float(next(v for k, v in res.items() if k.startswith("AR@")))
    for k, v in metrics.items():
        metrics[k] = float("nan") if v < 0 else v
    if pooled:
        freq = {int(c): cats[c].get("frequency", "") for c in cats}
        T = len(params.iou_thrs)
        with gc_paused():  # millions of per-image records, flattened chunk by chunk then dropped
            records = concat_records([stack_records(chunk, T) for chunk in eval_imgs()])
        metrics.update(pooled_ap(records, freq, len(params.iou_thrs), np.asarray(params.rec_thrs)))
    return metrics, precision, cat_ids


def _area_all_eval_imgs(E, images_per_chunk: int = 250) -> Iterator[list]:
    """hotcoco's per-image records of area "all" only, for pooled AP, ``images_per_chunk`` images at
    a time (in image id order): the matching is evaluated again with that one area range and those
    images (the matching of an image and a range does not depend on the others), so that hotcoco
    converts a quarter of the records to Python dicts (the costly part, in time and memory), and
    never more than one chunk's at once. Reading the records of area "all" from the first
    evaluation instead costs more: hotcoco converts all four ranges' (5,000 images: 3.5 s to convert
    and free them, against 1.3 s to re-evaluate, convert and free area "all"). 250 images: half the
    added peak memory of 1,000 (+0.09 against +0.21 GiB at 5,000 images), the same time. Call it
    after the metrics have been read from ``E``."""
    img_ids = sorted(E.params.img_ids)
    E.params.area_rng = [E.params.area_rng[0]]
    E.params.area_rng_lbl = [E.params.area_rng_lbl[0]]
    for start in range(0, len(img_ids), images_per_chunk):
        E.params.img_ids = img_ids[start : start + images_per_chunk]
        E.evaluate()
        yield E.eval_imgs


def _sums_from_per_class(res: dict, cat_ids, cats, num_iou: int, num_rec: int):
    """hotcoco's per-category AP (``"AP/<name>"``, categories with ground truth only) as the
    ``(sums, counts)`` of :func:`~.common.category_sums`: a category with ground truth has all
    ``T x R`` precision entries valid (lvis-api's ``accumulate`` fills them), so group AP = mean of
    its categories' AP, equal to the precision-array path to 1e-14. Reading the ``(T, R, K, A)``
    array back from hotcoco costs 4x more (0.07 s against 0.02 s at 1,203 classes). ``None`` when
    names are not unique."""
    index = {cats[c]["name"]: k for k, c in enumerate(cat_ids)}
    if len(index) != len(cat_ids):
        return None
    n = num_iou * num_rec
    sums, counts = np.zeros(len(cat_ids)), np.zeros(len(cat_ids), np.int64)
    for key, ap in res.items():
        if key.startswith("AP/") and ap >= 0:  # (-1 / nan: no ground truth)
            k = index[key[3:]]
            sums[k], counts[k] = ap * n, n
    return sums, counts


class LTLVISEvaluator(LTDatasetEvaluator):
    """LVIS box/mask evaluation with APr/APc/APf, AP by training-instance group and per-category AP.

    Args: see :class:`~.base.LTDatasetEvaluator`; ``max_dets_per_image``: LVIS keeps the 300
    highest-scoring detections per image (not with ``ap_protocol="fixed"``); ``backend``: ``"auto"``
    (hotcoco, else lvis-api), ``"hotcoco"`` or ``"lvis"``. Writes ``lvis_instances_results.json`` and
    ``lvis_per_category_{task}.csv``.
    """

    protocol = "lvis"
    reference_backend = "lvis"
    default_max_dets = 300
    supports_fixed_ap = True
    supports_pooled_ap = True

    def run_protocol(self, task, dets, rles):
        return evaluate_lvis_predictions(
            self._json_file,
            dets,
            rles,
            task,
            self.eval_max_dets,
            self._backend,
            pooled=self._pooled,
        )

    def group_results(self, task, train_instances, sums) -> Dict[str, float]:
        """``AP[lo,hi)`` of every non-empty group (zero-count classes in the first)."""
        out = OrderedDict()
        for lo, hi, idx in instance_bins(train_instances, self._group_edges, drop_empty=True):
            out[f"AP{group_label(lo, hi)}"] = 100.0 * precision_ap(sums, idx)
        return out
