"""COCO-LT (and plain COCO-format) evaluation: COCO metrics plus AP1-AP4 over training-instance bins.

BAGS' binning (``MODEL.LT.GROUP_EDGES``, default 10/100/1000): AP1 [1,10), AP2 [10,100),
AP3 [100,1000), AP4 [1000,inf) training instances; classes without training instances are in
no bin. An empty bin (no class with that many training instances, or none of its classes has
validation GT) reports ``nan`` and is named in the log.
Matching runs in hotcoco (pycocotools-exact); ``backend="pycocotools"`` is the reference.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections import OrderedDict
from typing import Dict, List, Optional

import numpy as np

from ..class_stats import group_label, instance_bins
from .base import LTDatasetEvaluator
from .common import detections_to_dicts, precision_ap, resolve_backend
from .hotcoco_results import load_hotcoco, with_mask_boxes

logger = logging.getLogger(__name__)

__all__ = ["LTCOCOEvaluator", "evaluate_coco_predictions", "COCO_METRICS"]

COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def evaluate_coco_predictions(
    gt,
    dets: np.ndarray,
    rles: Optional[List[dict]],
    iou_type: str,
    max_dets: int = 100,
    backend: str = "auto",
):
    """COCO protocol. Returns (metrics in [0,1] with nan for undefined, precision (T,R,K,A), cat ids)."""
    backend = resolve_backend(backend, "pycocotools")
    dets = np.ascontiguousarray(dets, dtype=np.float64).reshape(-1, 7)
    masks = rles if iou_type == "segm" else None
    if iou_type == "segm" and rles is None:
        raise ValueError("segm evaluation needs masks")
    dets, areas = with_mask_boxes(dets, masks)  # mask results carry no box (Detectron2)
    if backend == "hotcoco":
        import hotcoco

        G, D = load_hotcoco(gt, dets, masks, areas)
        E = hotcoco.COCOeval(G, D, iou_type)
        E.params.max_dets = [1, 10, max_dets]
    else:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        with contextlib.redirect_stdout(io.StringIO()):
            if isinstance(gt, dict):
                G = COCO()
                G.dataset = gt
                G.createIndex()
            else:
                G = COCO(gt)
            if len(dets):
                res = detections_to_dicts(dets, masks)
                if masks is not None:
                    for r in res:
                        r.pop("bbox")  # as Detectron2: the mask's area and box
                D = G.loadRes(res)
            else:
                D = COCO()
        E = COCOeval(G, D, iou_type)
        E.params.maxDets = [1, 10, max_dets]
    if len(dets) == 0:
        logger.warning("No detections: every AP is 0.")
        k = len(G.getCatIds())
        return (
            OrderedDict((m, 0.0) for m in COCO_METRICS),
            np.zeros((10, 101, k, 4)),
            sorted(G.getCatIds()),
        )
    with contextlib.redirect_stdout(io.StringIO()):
        E.evaluate()
        E.accumulate()
        # hotcoco's summarize prints from Rust, past redirect_stdout: summary_lines computes the
        # same stats without printing (pycocotools has no summary_lines; its print is redirected)
        E.summary_lines() if hasattr(E, "summary_lines") else E.summarize()
    stats = np.asarray(E.stats, dtype=np.float64)
    metrics = OrderedDict(
        (k, float("nan") if stats[i] < 0 else float(stats[i])) for i, k in enumerate(COCO_METRICS)
    )
    precision = np.asarray(E.eval["precision"])[..., -1]  # (T, R, K, A) at the largest maxDets
    cat_ids = list(E.params.catIds)
    return metrics, precision, cat_ids


class LTCOCOEvaluator(LTDatasetEvaluator):
    """COCO metrics + AP1..AP4 over training-instance bins + per-category AP csv.

    Args: see :class:`~.base.LTDatasetEvaluator`; ``max_dets_per_image``: COCO's maxDets (default
    100; no per-image cap is applied, as in Detectron2's COCOEvaluator); ``backend``: ``"auto"``,
    ``"hotcoco"`` or ``"pycocotools"``. Writes ``coco_instances_results.json`` and
    ``coco_per_category_{task}.csv``; the empty bins of the last task are in ``empty_bins``.
    """

    protocol = "coco"
    reference_backend = "pycocotools"
    default_max_dets = 100
    caps_per_image = False
    nan_means = "empty"

    def reset(self):
        super().reset()
        self.empty_bins: List[str] = []

    def run_protocol(self, task, dets, rles):
        return evaluate_coco_predictions(
            self._json_file, dets, rles, task, self._max_dets, self._backend
        )

    def group_results(self, task, train_instances, sums) -> Dict[str, float]:
        """``AP1``.. ``AP{k+1}`` over ``[1, e_0) ... [e_k, inf)``, nan (and named in ``empty_bins``) when empty."""
        out = OrderedDict()
        self.empty_bins = []
        if (train_instances < 0).all():
            logger.warning(
                f"No training instance counts for {self._dataset_name}: AP1-AP4 are not reported "
                "(pass class_stats=...)."
            )
            return out
        for i, (lo, hi, idx) in enumerate(
            instance_bins(train_instances, self._group_edges, min_count=1), start=1
        ):
            ap = precision_ap(sums, idx) if len(idx) else float("nan")
            out[f"AP{i}"] = 100.0 * ap
            if len(idx) == 0:
                self.empty_bins.append(f"AP{i} {group_label(lo, hi)}: no class")
            elif not np.isfinite(ap):
                self.empty_bins.append(
                    f"AP{i} {group_label(lo, hi)}: no validation GT for its {len(idx)} classes"
                )
        if self.empty_bins:
            logger.warning(
                f"Empty instance bins for {self._dataset_name} ({task}): "
                + "; ".join(self.empty_bins)
            )
        return out
