from .backbone import TinyNet, build_tiny_backbone, build_tiny_fpn_backbone
from .box_predictor import LongTailFastRCNNOutputLayers
from .calibration import CALIBRATION_REGISTRY, build_calibration
from .classifiers import build_classifier
from .class_selected_masks import (
    ClassSelectedMaskMixin,
    class_selected_logits,
    class_selected_mask_inference,
    class_selected_mask_logits,
)
from .mask_heads import NormedMaskRCNNConvUpsampleHead
from .normed_conv import NormedConv2d
from .roi_mask_inference import ROIMaskInference, postprocess_keep_roi_masks, roi_mask_model
from .roi_heads import LongTailCascadeROIHeads, LongTailROIHeads
from . import dense  # noqa: F401  (registers LongTailRetinaNet, FCOS, CenterNet)
