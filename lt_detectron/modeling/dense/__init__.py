"""Dense (one-stage) meta-architectures: ``LongTailRetinaNet``, ``FCOS``, ``CenterNet`` (registered in
Detectron2's ``META_ARCH_REGISTRY`` on import), their classification loss dispatch (``cls_loss``) and
config keys (``add_dense_config``)."""
from .config import add_dense_config  # noqa: F401
from .cls_loss import DENSE_LOSSES, DenseClassificationLoss, build_dense_cls_loss  # noqa: F401
from .retinanet import LongTailRetinaNet  # noqa: F401
from .fcos import FCOS, FCOSHead  # noqa: F401
from .centernet import CenterNet, CenterNetHead  # noqa: F401
