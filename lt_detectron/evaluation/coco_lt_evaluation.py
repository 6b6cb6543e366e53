"""COCO-LT (and plain COCO-format) evaluation: COCO metrics plus AP1-AP4 over training-instance bins.

BAGS' binning: AP1 [1,10), AP2 [10,100), AP3 [100,1000), AP4 [1000,inf) training
instances. An empty bin (no class with that many training instances, or none of its
classes has validation GT) reports ``nan`` and is named in the log.
Matching runs in hotcoco (pycocotools-exact); ``backend="pycocotools"`` is the reference.
"""
from __future__ import annotations

import contextlib
import io
import logging
from collections import OrderedDict
from typing import List, Optional, Sequence

import numpy as np

from .common import bin_label, category_sums, format_table, instance_bins, precision_ap
from .lvis_evaluation import LTLVISEvaluator

logger = logging.getLogger(__name__)

__all__ = ["LTCOCOEvaluator", "evaluate_coco_predictions", "COCO_METRICS", "BAGS_BIN_EDGES"]

COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
BAGS_BIN_EDGES = (10, 100, 1000)


def evaluate_coco_predictions(gt, dets: np.ndarray, rles: Optional[List[dict]], iou_type: str,
                              max_dets: int = 100, backend: str = "auto"):
    """COCO protocol. Returns (metrics in [0,1] with nan for undefined, precision (T,R,K,A), cat ids)."""
    if backend not in ("auto", "hotcoco", "pycocotools"):
        raise ValueError(f"backend must be 'auto', 'hotcoco' or 'pycocotools', got {backend!r}")
    use_hotcoco = backend in ("auto", "hotcoco")
    if use_hotcoco:
        try:
            import hotcoco
        except ImportError:
            if backend == "hotcoco":
                raise
            use_hotcoco = False
    dets = np.ascontiguousarray(dets, dtype=np.float64).reshape(-1, 7)
    if use_hotcoco:
        G = hotcoco.COCO(gt)
        D = G.load_res(dets) if rles is None else G.load_res(dets, segmentation=rles)
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
                from .lvis_evaluation import _rows_to_dicts

                res = _rows_to_dicts(dets, rles)
                if iou_type == "bbox":
                    for r in res:
                        r.pop("segmentation", None)
                D = G.loadRes(res)
            else:
                D = COCO()
        E = COCOeval(G, D, iou_type)
        E.params.maxDets = [1, 10, max_dets]
    if len(dets) == 0:
        logger.warning("No detections: every AP is 0.")
        k = len(G.getCatIds())
        return OrderedDict((m, 0.0) for m in COCO_METRICS), np.zeros((10, 101, k, 4)), sorted(G.getCatIds())
    with contextlib.redirect_stdout(io.StringIO()):
        E.evaluate()
        E.accumulate()
        E.summarize()
    stats = np.asarray(E.stats, dtype=np.float64)
    metrics = OrderedDict((k, float("nan") if stats[i] < 0 else float(stats[i])) for i, k in enumerate(COCO_METRICS))
    precision = np.asarray(E.eval["precision"])[..., -1]  # (T, R, K, A) at the largest maxDets
    cat_ids = list(E.params.catIds)
    return metrics, precision, cat_ids


class LTCOCOEvaluator(LTLVISEvaluator):
    """COCO metrics + AP1..AP4 over training-instance bins + per-category AP csv.

    Same arguments as :class:`LTLVISEvaluator` except ``max_dets_per_image`` (default 100,
    COCO's maxDets; no per-image cap is applied, as in Detectron2's COCOEvaluator) and
    ``backend`` (``"auto"``/``"hotcoco"``/``"pycocotools"``). Bin edges default to BAGS'
    (10, 100, 1000); classes with 0 training instances fall in no bin.
    """

    def __init__(self, dataset_name: str, tasks: Sequence[str] = ("bbox",), distributed: bool = True,
                 output_dir: Optional[str] = None, max_dets_per_image: int = 100, class_stats=None,
                 backend: str = "auto", group_edges: Sequence[int] = BAGS_BIN_EDGES):
        self._coco_backend = backend
        super().__init__(dataset_name, tasks, distributed, output_dir, max_dets_per_image, class_stats,
                         backend="lvis" if backend == "pycocotools" else "auto", group_edges=group_edges)
        self._prefix = "lt_coco_" + self._prefix[len("lt_lvis_"):]

    def _process_cap(self):
        return None

    def _evaluate_task(self, task, dets, rles):
        metrics, precision, cat_ids = evaluate_coco_predictions(
            self._json_file, dets, rles, task, self._max_dets, self._coco_backend
        )
        results = OrderedDict((k, 100.0 * v) for k, v in metrics.items())
        names, freq, inst, imgs = self._category_info(cat_ids)
        precision = category_sums(precision)  # (sums, counts) per category: cheap group / category AP
        self.empty_bins = []
        if (inst < 0).all():
            logger.warning(f"No training instance counts for {self._dataset_name}: AP1-AP4 are not reported "
                           "(pass class_stats=...).")
        else:
            bins = instance_bins(inst, self._group_edges, lo0=1)
            for i, (lo, hi, idx) in enumerate(bins, start=1):
                ap = precision_ap(precision, idx) if len(idx) else float("nan")
                results[f"AP{i}"] = 100.0 * ap
                if len(idx) == 0:
                    self.empty_bins.append(f"AP{i} {bin_label(lo, hi)}: no class")
                elif not np.isfinite(ap):
                    self.empty_bins.append(f"AP{i} {bin_label(lo, hi)}: no validation GT for its {len(idx)} classes")
            if self.empty_bins:
                logger.warning(f"Empty instance bins for {self._dataset_name} ({task}): " + "; ".join(self.empty_bins))
        self._write_per_category(f"coco_per_category_{task}.csv", task, cat_ids, names, freq, inst, imgs, precision)
        logger.info(format_table(results, f"COCO {task} results of {self._dataset_name} (AP in %, nan = empty):"))
        return results
