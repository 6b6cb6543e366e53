"""Evaluators: LVIS (federated, APr/APc/APf, AP by instance group) and COCO-LT (AP1-AP4)."""
from .coco_lt_evaluation import LTCOCOEvaluator, evaluate_coco_predictions
from .lvis_evaluation import LTLVISEvaluator, evaluate_lvis_predictions

__all__ = ["LTLVISEvaluator", "LTCOCOEvaluator", "evaluate_lvis_predictions", "evaluate_coco_predictions"]
