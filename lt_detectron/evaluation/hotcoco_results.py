"""Detections in the ``(N, 7)`` matrix form, prepared for the LVIS and COCO protocols alike.

Detectron2 writes mask results without a box: their boxes and areas come from the masks
(:func:`with_mask_boxes`). :func:`load_hotcoco` loads ground truth and detections into hotcoco,
with the mask areas, for both protocols.
"""

from typing import List, Optional, Tuple

import numpy as np

from .common import mask_boxes_and_areas

__all__ = ["with_mask_boxes", "load_hotcoco"]


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


def load_hotcoco(gt, dets: np.ndarray, masks: Optional[List[dict]], areas: Optional[np.ndarray]):
    """``(G, D)``: hotcoco's ground truth of ``gt`` (path or dict) and the loaded detections."""
    import hotcoco

    G = hotcoco.COCO(gt)
    D = G.load_res(dets) if masks is None else G.load_res(dets, segmentation=masks)
    if areas is not None:
        D.update_anns(ids=np.arange(1, len(dets) + 1), area=areas)
    return G, D
