"""Detections in the ``(N, 7)`` matrix form, prepared for the LVIS and COCO protocols alike.

Detectron2 writes mask results without a box: their boxes and areas come from the masks
(:func:`with_mask_boxes`). :func:`lvis_kept_results` keeps what lvis-api's ``LVISResults`` /
``LVISEval`` evaluate: the per-image cap, then only results of positive area (an empty mask, a box of
width or height 0 is dropped); pycocotools keeps them (false positives), so the COCO protocol does not
call it. :func:`load_hotcoco` loads ground truth and detections into hotcoco, with the mask areas, for
both protocols (for LVIS without the ground truth of area <= 0, which lvis-api does not read either).
"""

from typing import List, Optional, Tuple

import numpy as np

from .common import keep_top_per_group, mask_boxes_and_areas

__all__ = ["with_mask_boxes", "lvis_kept_results", "load_hotcoco"]


def with_mask_boxes(
    dets: np.ndarray, masks: Optional[List[dict]]
) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """``(dets, areas)``: for mask results a copy of ``dets`` with the masks' boxes and their areas,
    else ``dets`` unchanged and ``None``."""
    if masks is None or not len(dets):
        return dets, None
    dets = dets.copy()
    dets[:, 1:5], areas = mask_boxes_and_areas(masks)
    return dets, areas


def lvis_kept_results(
    dets: np.ndarray, masks: Optional[List[dict]], max_dets: int
) -> Tuple[np.ndarray, Optional[List[dict]], Optional[np.ndarray]]:
    """``(dets, masks, areas)`` that lvis-api evaluates, boxes and areas of mask results from the masks.

    ``LVISResults`` keeps the ``max_dets`` highest-scoring results per image (``-1``: all), and
    ``LVISEval`` reads them through ``get_ann_ids``, which keeps ``0 < area < inf`` only: a mask result's
    area is its mask's (whatever box it carries), a box result's ``w * h``. So an empty mask (Mask R-CNN
    emits them) or a box of width 0 takes a slot of the cap and is then not evaluated at all; hotcoco
    would count it as a false positive. Vectorised: no per-detection Python code.
    """
    if max_dets >= 0:
        dets, masks = keep_top_per_group(dets, masks, 0, max_dets)
    dets, areas = with_mask_boxes(dets, masks)
    area = areas if areas is not None else dets[:, 3] * dets[:, 4]
    keep = (area > 0) & (area < np.inf)
    if keep.all():
        return dets, masks, areas
    idx = np.flatnonzero(keep)
    if masks is not None:
        objs = np.empty(len(masks), dtype=object)
        objs[:] = masks
        masks = objs[idx].tolist()
    return dets[idx], masks, (areas[idx] if areas is not None else None)


# lvis-api's ``get_ann_ids`` keeps ``0 < area < inf``; hotcoco's area range is inclusive
_POSITIVE_AREA = [float(np.nextafter(0.0, 1.0)), float(np.finfo(np.float64).max)]


def load_hotcoco(
    gt,
    dets: np.ndarray,
    masks: Optional[List[dict]],
    areas: Optional[np.ndarray],
    lvis: bool = False,
):
    """``(G, D)``: hotcoco's ground truth of ``gt`` (path or dict) and the loaded detections.

    ``lvis``: drop ground truth whose ``area`` is not positive, as lvis-api's ``LVISEval`` never
    loads it (pycocotools evaluates it, so the COCO protocol keeps it)."""
    import hotcoco

    G = hotcoco.COCO(gt)
    if lvis and len(G.get_ann_ids(area_rng=_POSITIVE_AREA)) < len(G.get_ann_ids()):
        G = G.filter(area_rng=_POSITIVE_AREA, drop_empty_images=False)
    D = G.load_res(dets) if masks is None else G.load_res(dets, segmentation=masks)
    if areas is not None:
        D.update_anns(ids=np.arange(1, len(dets) + 1), area=areas)
    return G, D
