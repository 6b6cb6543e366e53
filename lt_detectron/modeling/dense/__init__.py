"""Dense (one-stage) meta-architectures: ``LongTailRetinaNet``, ``FCOS``, ``CenterNet`` (registered in
Detectron2's ``META_ARCH_REGISTRY`` on import). Their classification loss is a protocol loss of
``lt_detectron.losses`` (``MODEL.LT.DENSE_LOSS``); their config keys are in ``lt_detectron/config.py``."""

from .retinanet import LongTailRetinaNet  # noqa: F401
from .fcos import FCOS, FCOSHead  # noqa: F401
from .centernet import CenterNet, CenterNetHead  # noqa: F401
