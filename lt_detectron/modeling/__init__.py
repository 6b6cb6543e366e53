from .backbone import TinyNet, build_tiny_backbone, build_tiny_fpn_backbone
from .box_predictor import LongTailFastRCNNOutputLayers
from .classifiers import build_classifier
from .roi_mask_inference import ROIMaskInference, postprocess_keep_roi_masks, roi_mask_model
from .roi_heads import LongTailCascadeROIHeads, LongTailROIHeads
from . import dense  # noqa: F401  (registers LongTailRetinaNet, FCOS, CenterNet)
