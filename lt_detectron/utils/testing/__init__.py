"""Test data (in the spirit of ``detectron2/utils/testing.py``), not part of the training path.

- :mod:`.real_formats`: files in the exact on-disk formats of LVIS v1, COCO 2017 and COCO-LT,
  small enough to train on a CPU (:func:`make_fixtures`).
- :mod:`.mask_rcnn`: a random-weight Mask R-CNN that reaches its detection limit, noise images.
- :mod:`.weights`: a random-weight R-50 in detectron2's MSRA ``.pkl`` format.
- :mod:`.config`: configs with lt_detectron's keys; a tiny CPU one-stage detector and Mask R-CNN.
- :mod:`.roi_masks`: ROI-level mask probabilities like a Mask R-CNN head's.
- :mod:`.detections`: generated LVIS-like ground truth and detections for evaluator tests and
  benchmarks.
"""

from .config import (
    TINY_DENSE_COUNTS,
    TINY_DENSE_DATASET,
    build_tiny_dense,
    build_tiny_mask_rcnn,
    lt_cfg,
    tiny_dense_cfg,
    tiny_dense_inputs,
)
from .detections import (
    detections_to_instances,
    detections_to_results,
    lvis_v1_like_categories,
    make_detections,
    make_lvis_like_gt,
)
from .mask_rcnn import random_images, random_mask_rcnn
from .real_formats import (
    COCO_SUPERCATEGORIES,
    coco_categories,
    fixture_paths,
    lvis_v1_categories,
    make_coco_lt_fixture,
    make_fixtures,
    make_lvis_coco_fixtures,
)
from .roi_masks import make_roi_masks
from .weights import make_r50_msra_pkl

__all__ = [
    "make_roi_masks",
    "lt_cfg",
    "tiny_dense_cfg",
    "build_tiny_dense",
    "build_tiny_mask_rcnn",
    "tiny_dense_inputs",
    "TINY_DENSE_COUNTS",
    "TINY_DENSE_DATASET",
    "COCO_SUPERCATEGORIES",
    "coco_categories",
    "lvis_v1_categories",
    "make_lvis_coco_fixtures",
    "make_coco_lt_fixture",
    "make_r50_msra_pkl",
    "random_mask_rcnn",
    "random_images",
    "make_fixtures",
    "fixture_paths",
    "lvis_v1_like_categories",
    "make_lvis_like_gt",
    "make_detections",
    "detections_to_results",
    "detections_to_instances",
]
