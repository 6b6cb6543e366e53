"""Boundary AP for masks (Cheng et al. 2021, "Boundary IoU: Improving Object-Centric Image
Segmentation Evaluation"), through ``faster-coco-eval`` (optional dependency).

Boundary IoU of two masks is ``min(mask IoU, IoU of their boundary regions)``; the boundary region of
a mask is its pixels within ``d = max(1, round(dilation_ratio * image diagonal))`` pixels of its
contour (the mask minus its erosion by a 3x3 kernel applied ``d`` times, the image border counting
as contour). Matching and accumulation are otherwise the dataset's protocol (LVIS federated rules, or
COCO). The reference implementation (``bowenc0221/boundary-iou-api``) is not on PyPI;
``faster-coco-eval`` (>= 1.8, ``iouType="boundary"``) computes the same IoU and reproduces an
independent transcription of the reference (``tests/evaluation/test_evaluation_boundary.py``). hotcoco, our main
backend, has no boundary IoU.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import List, Optional

import numpy as np

from .common import detections_to_dicts
from .hotcoco_results import lvis_kept_results

logger = logging.getLogger(__name__)

__all__ = ["evaluate_boundary_predictions"]

_KEYS = (
    ("AP", "AP_all"),
    ("AP50", "AP_50"),
    ("AP75", "AP_75"),
    ("APs", "AP_small"),
    ("APm", "AP_medium"),
    ("APl", "AP_large"),
)


def _faster_coco_eval():
    try:
        import faster_coco_eval  # noqa: F401
        from faster_coco_eval import COCO, COCOeval_faster
    except ImportError as e:
        raise ImportError(
            "Boundary AP (TEST.LT.BOUNDARY_AP / task 'boundary') needs faster-coco-eval >= 1.8 and OpenCV: "
            "pip install 'faster-coco-eval>=1.8' opencv-python-headless"
        ) from e
    return COCO, COCOeval_faster


def evaluate_boundary_predictions(
    gt,
    dets: np.ndarray,
    rles: Optional[List[dict]],
    max_dets: int,
    lvis_style: bool,
    dilation_ratio: float = 0.02,
):
    """Boundary AP of mask detections.

    Args:
        gt: ground-truth json path or dict.
        dets, rles: detection matrix ``(N, 7)`` and one RLE per detection.
        max_dets: LVIS: detections kept per image (``-1``: all); COCO: ``maxDets`` (per image and class).
        lvis_style: the LVIS federated protocol (else COCO's).
        dilation_ratio: boundary width as a fraction of the image diagonal (0.02, the paper's).

    Returns:
        ``(metrics in [0, 1] with nan for undefined, precision (T, R, K, A), sorted category ids)``.
    """
    if rles is None:
        raise ValueError("boundary evaluation needs masks (pred_masks)")
    COCO, COCOeval_faster = _faster_coco_eval()
    if lvis_style:  # lvis-api's cap, then only masks of positive area (as the LVIS protocol)
        dets, rles, _ = lvis_kept_results(
            np.asarray(dets, np.float64).reshape(-1, 7), rles, max_dets
        )
    results = detections_to_dicts(np.asarray(dets, np.float64).reshape(-1, 7), rles)
    for r in results:
        r.pop("bbox")  # area and box from the mask (as Detectron2 does for mask results)
        seg = r["segmentation"]
        if isinstance(seg["counts"], bytes):
            r["segmentation"] = {"size": seg["size"], "counts": seg["counts"].decode("ascii")}
    G = COCO(gt)
    D = G.loadRes(results) if results else G.loadRes([])
    quiet = lambda *a, **k: None  # noqa: E731
    E = COCOeval_faster(
        G,
        D,
        "boundary",
        lvis_style=lvis_style,
        boundary_dilation_ratio=dilation_ratio,
        print_function=quiet,
    )
    if lvis_style:
        E.params.maxDets = [max_dets if max_dets >= 0 else max(len(results), 1)]
    else:
        E.params.maxDets = [1, 10, max_dets]
    E.evaluate()
    E.accumulate()
    E.summarize()
    stats = E.stats_as_dict
    metrics = OrderedDict((ours, float(stats.get(theirs, -1))) for ours, theirs in _KEYS)
    if lvis_style:
        for band in ("APr", "APc", "APf"):
            metrics[band] = float(stats.get(band, -1))
    for k, v in metrics.items():
        metrics[k] = float("nan") if v < 0 else v
    precision = np.asarray(E.eval["precision"])
    if precision.ndim == 5:
        precision = precision[..., -1]
    return metrics, precision, sorted(int(c) for c in E.params.catIds)
