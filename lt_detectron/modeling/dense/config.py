"""``add_dense_config(cfg)``: config keys of the dense (one-stage) meta-architectures.

RetinaNet keeps Detectron2's ``MODEL.RETINANET.*`` keys; FCOS and CenterNet (absent from
Detectron2 v0.6) get ``MODEL.FCOS.*`` and ``MODEL.CENTERNET.*`` with the papers' defaults. The
classification loss of all three is ``MODEL.LT.DENSE_LOSS`` (focal | bofl | eqlv2 | ecm) with the
method keys under ``MODEL.LT.{BOFL,EQLV2}`` (see ``lt_detectron/config.py``).
"""
from detectron2.config import CfgNode as CN

__all__ = ["add_dense_config"]


def add_dense_config(cfg):
    """Add the FCOS / CenterNet keys to ``cfg`` in place (idempotent); returns ``cfg``."""
    _C = cfg
    if "FCOS" not in _C.MODEL:
        _C.MODEL.FCOS = CN()
        _C.MODEL.FCOS.NUM_CLASSES = 80
        _C.MODEL.FCOS.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
        _C.MODEL.FCOS.NUM_CONVS = 4  # convs in each tower (cls / box)
        _C.MODEL.FCOS.HEAD_NORM = "GN"  # norm of the tower convs: GN | BN | "" (none)
        _C.MODEL.FCOS.PRIOR_PROB = 0.01  # classifier bias b = -log((1 - p) / p)
        _C.MODEL.FCOS.FOCAL_LOSS_ALPHA = 0.25
        _C.MODEL.FCOS.FOCAL_LOSS_GAMMA = 2.0
        # level i takes locations whose max(l, t, r, b) is in [S_{i-1}, S_i]; S_{-1}=0, S_L=inf
        _C.MODEL.FCOS.SIZES_OF_INTEREST = [64, 128, 256, 512]
        _C.MODEL.FCOS.CENTER_SAMPLING_RADIUS = 1.5  # in strides; 0 disables center sampling
        _C.MODEL.FCOS.BOX_LOSS = "giou"  # giou | iou (-log IoU)
        _C.MODEL.FCOS.NORM_REG_TARGETS = True  # predict ltrb / stride (relu), as FCOS' improvements
        _C.MODEL.FCOS.CENTERNESS_ON_REG = True  # centerness branch on the box tower
        _C.MODEL.FCOS.SCORE_THRESH_TEST = 0.05  # on the classification probability
        _C.MODEL.FCOS.TOPK_CANDIDATES_TEST = 1000  # per level, before NMS
        _C.MODEL.FCOS.NMS_THRESH_TEST = 0.6
    if "CENTERNET" not in _C.MODEL:
        _C.MODEL.CENTERNET = CN()
        _C.MODEL.CENTERNET.NUM_CLASSES = 80
        _C.MODEL.CENTERNET.IN_FEATURE = "p2"  # the single output level (stride 4 in the paper)
        _C.MODEL.CENTERNET.HEAD_CONV = 64  # channels of the 3x3 conv of each head branch
        _C.MODEL.CENTERNET.PRIOR_PROB = 0.1  # heat-map bias -2.19, as CenterNet
        _C.MODEL.CENTERNET.MIN_OVERLAP = 0.7  # gaussian_radius' IoU
        _C.MODEL.CENTERNET.HM_ALPHA = 2.0  # penalty-reduced focal loss exponents
        _C.MODEL.CENTERNET.HM_BETA = 4.0
        _C.MODEL.CENTERNET.HM_WEIGHT = 1.0
        _C.MODEL.CENTERNET.WH_WEIGHT = 0.1
        _C.MODEL.CENTERNET.OFF_WEIGHT = 1.0
        _C.MODEL.CENTERNET.NMS_KERNEL = 3  # max-pool peak extraction
        _C.MODEL.CENTERNET.TOPK_TEST = 100  # peaks kept per image (capped by TEST.DETECTIONS_PER_IMAGE)
        _C.MODEL.CENTERNET.SCORE_THRESH_TEST = 0.0
    return cfg
