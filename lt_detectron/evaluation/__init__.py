"""Evaluators: LVIS (federated, APr/APc/APf, AP by instance group; standard or Fixed AP, pooled AP)
and COCO-LT (AP1-AP4), siblings on :class:`~.base.LTDatasetEvaluator`; one protocol function each;
:func:`~.build.build_lt_evaluator` builds either from the config; :mod:`.predictions` reads and writes
Detectron2's results json."""

from .base import LTDatasetEvaluator
from .build import build_lt_evaluator
from .coco_lt_evaluation import LTCOCOEvaluator, evaluate_coco_predictions
from .lvis_evaluation import LTLVISEvaluator, evaluate_lvis_predictions
from .pooled import pooled_ap
from .predictions import results_file_name, write_results_json
from .results_loading import load_results_json
from .roi_mask_pipeline import RoiMaskPipeline
from .roi_masks import encode_roi_masks

__all__ = [
    "LTDatasetEvaluator",
    "LTLVISEvaluator",
    "LTCOCOEvaluator",
    "build_lt_evaluator",
    "evaluate_lvis_predictions",
    "evaluate_coco_predictions",
    "pooled_ap",
    "load_results_json",
    "write_results_json",
    "results_file_name",
    "encode_roi_masks",
    "RoiMaskPipeline",
]
