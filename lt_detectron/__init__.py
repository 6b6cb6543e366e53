"""lt_detectron: long-tailed object detection for Detectron2.

``import lt_detectron`` registers the ROI heads (``LongTailROIHeads``,
``LongTailCascadeROIHeads``), the dense meta-architectures (``LongTailRetinaNet``, ``FCOS``,
``CenterNet``), the tiny backbone and the datasets (LVIS statistics, COCO-LT, the embedded
``lt_shapes``). ``add_lt_config(cfg)`` adds the config keys.
"""

from .config import add_lt_config
from .class_stats import ClassStats, get_class_stats
from . import data  # noqa: F401  (dataset registration)
from . import modeling  # noqa: F401  (heads, meta-architectures, backbone)

__version__ = "0.1.0"
__all__ = ["add_lt_config", "ClassStats", "get_class_stats", "__version__"]
