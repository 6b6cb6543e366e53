"""``add_lt_config(cfg)``: every config key lt_detectron adds, with the papers' defaults.

Detectron2 main's key names are kept where they exist (``MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE``,
``USE_FED_LOSS``, ...); our method keys live under ``MODEL.LT``.
"""
from detectron2.config import CfgNode as CN


def add_lt_config(cfg):
    """Add lt_detectron's keys to a Detectron2 ``CfgNode`` in place (idempotent)."""
    from .modeling.dense.config import add_dense_config

    if "LT" not in cfg.MODEL:
        _add_lt_keys(cfg)
    add_dense_config(cfg)  # MODEL.FCOS.*, MODEL.CENTERNET.*
    return cfg


def _add_lt_keys(cfg):
    _C = cfg
    # ---------------------------------------------------------------- detectron2-main keys
    _C.MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE = False  # sigmoid BCE classifier (detectron2 main)
    _C.MODEL.ROI_BOX_HEAD.USE_FED_LOSS = False  # federated loss (detectron2 main / CenterNet2)
    _C.MODEL.ROI_BOX_HEAD.FED_LOSS_NUM_CLASSES = 50  # classes per federated-loss subset
    _C.MODEL.ROI_BOX_HEAD.FED_LOSS_FREQ_WEIGHT_POWER = 0.5  # sampling weight image_count**p

    # ---------------------------------------------------------------- our methods
    _C.MODEL.LT = CN()
    # ROI classification loss: softmax | sigmoid | eqlv2 | ecm | bags | c2am
    _C.MODEL.LT.ROI_LOSS = "softmax"
    # Classifier layer: linear | cosine (ECM recipe: cosine, temperature 20, with bias)
    _C.MODEL.LT.CLASSIFIER = "linear"
    _C.MODEL.LT.COSINE_SCALE = 20.0  # temperature of the cosine classifier (NormedLinear)
    # Prior probability for the classifier bias, b = -log((1-p)/p); 0 keeps Detectron2's init.
    # EQL v2 uses 0.001 (bias about -6.9); "auto" per-method defaults are applied when < 0.
    _C.MODEL.LT.PRIOR_PROB = -1.0
    # Instance-count group edges of the class-statistics registry (BAGS bins, AP by group)
    _C.MODEL.LT.GROUP_EDGES = [10, 100, 1000]

    _C.MODEL.LT.EQLV2 = CN()
    _C.MODEL.LT.EQLV2.GAMMA = 12.0  # steepness of the mapping f(g)
    _C.MODEL.LT.EQLV2.MU = 0.8  # centre of f(g)
    _C.MODEL.LT.EQLV2.ALPHA = 4.0  # positive up-weighting 1 + alpha (1 - f(g))

    _C.MODEL.LT.ECM = CN()
    _C.MODEL.LT.ECM.BG_FG_RATIO = 6.3313  # background:foreground ROI ratio (authors' constant)
    _C.MODEL.LT.ECM.MEASURE_ITERS = 0  # > 0: measure the ratio over the first K iterations

    _C.MODEL.LT.BAGS = CN()
    _C.MODEL.LT.BAGS.BIN_EDGES = [10, 100, 1000]  # instance-count bins of the groups
    _C.MODEL.LT.BAGS.BETA = 8.0  # "others" sampled per group: beta x positives

    _C.MODEL.LT.C2AM = CN()
    _C.MODEL.LT.C2AM.SCALE = 30.0  # cosine scale s
    _C.MODEL.LT.C2AM.ALPHA = 0.5  # margin strength
    _C.MODEL.LT.C2AM.BACKGROUND_MARGIN = True  # [interp] background is a cosine class with margins

    # BOFL (dense heads natively; ROI heads with a sigmoid classifier as an extension)
    _C.MODEL.LT.BOFL = CN()
    _C.MODEL.LT.BOFL.ENABLED = False
    _C.MODEL.LT.BOFL.KAPPA = 1.0  # intensity of the dataset-level weight (0.05 for COCO-LT/LVIS)
    _C.MODEL.LT.BOFL.ETA = 0.999  # batch-wise factor (0.8 CenterNet per image, 0.999 FCOS per batch)
    _C.MODEL.LT.BOFL.BATCH_COUNTS = "batch"  # "image" (CenterNet) | "batch" (FCOS) | "none"
    _C.MODEL.LT.BOFL.DEFERRED_EPOCHS = 3  # lambda = 0 for the first d epochs (DRW)
    _C.MODEL.LT.BOFL.TOTAL_EPOCHS = 0  # 0: derived from SOLVER.MAX_ITER and the dataset length
    _C.MODEL.LT.BOFL.PER_ITERATION = False  # ablation: update lambda every iteration
    _C.MODEL.LT.BOFL.LINEAR_SCHEDULE = True  # False: lambda = 1 from the start (ablation "WF" without LS)

    # Decoupled training (BAGS recipe): freeze all but the classification layer(s)
    _C.MODEL.LT.FREEZE_ALL_BUT_CLS = False
    _C.MODEL.LT.REINIT_CLS = False  # drop cls_score weights from MODEL.WEIGHTS (shape changes)

    # ---------------------------------------------------------------- dense heads
    # Classification loss of the dense heads: focal | bofl | eqlv2 | ecm
    _C.MODEL.LT.DENSE_LOSS = "focal"

    # ---------------------------------------------------------------- tiny backbone (demo)
    _C.MODEL.TINY = CN()
    _C.MODEL.TINY.WIDTHS = [16, 32, 64, 96]  # channels of the stages (strides 4, 8, 16, 32)
    _C.MODEL.TINY.OUT_FEATURES = ["t3", "t4", "t5"]

    # ---------------------------------------------------------------- evaluation, hooks
    _C.TEST.LT = CN()
    _C.TEST.LT.BACKEND = "auto"  # LVIS matching backend: auto | lvis (lvis-api reference)
    _C.TEST.LT.MAX_DETS = 300
    _C.LT_HOOKS = CN()
    _C.LT_HOOKS.PLOT_PERIOD = 0  # > 0: write method plots (weight norms, EQL v2 ratios) every N iters
