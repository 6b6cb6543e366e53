"""``add_lt_config(cfg)``: every config key lt_detectron adds, with the papers' defaults.

Detectron2 main's key names are kept where they exist (``MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE``,
``USE_FED_LOSS``, ...); our method keys live under ``MODEL.LT``; our FCOS and CenterNet get ``MODEL.FCOS.*``
and ``MODEL.CENTERNET.*`` (Detectron2 v0.6 has no yacs keys for either). This file owns every key,
and its allowed values: ``validate_lt_config(cfg)`` refuses a value outside them, naming the allowed
ones (the tools call it when they load a config; ``build_lt_evaluator`` and ``LTTrainer.build_model``
for library users).
"""

import math

from detectron2.config import CfgNode as CN

__all__ = ["add_lt_config", "validate_lt_config", "LTConfigError", "lookup_key"]


def add_lt_config(cfg):
    """Add lt_detectron's keys to a Detectron2 ``CfgNode`` in place (idempotent); returns ``cfg``."""
    if "LT" not in cfg.MODEL:
        _add_lt_keys(cfg)
    _add_dense_keys(cfg)  # MODEL.FCOS.*, MODEL.CENTERNET.*
    return cfg


class LTConfigError(ValueError):
    """An lt_detectron config key with a value outside its allowed set or range."""


# allowed values of the MODEL.LT / TEST.LT / LT_HOOKS keys: a tuple = a closed set; ("int" | "float",
# lo, hi, lo_open) = a number in [lo, hi] (lo excluded when lo_open); "bool"; "edges" = a strictly
# increasing list of positive instance counts. ROI_LOSS / DENSE_LOSS: the loss registries' names.
_ALLOWED = {
    "MODEL.LT.CLASSIFIER": ("linear", "cosine"),
    "MODEL.LT.COSINE_SCALE": ("float", 0.0, math.inf, True),
    "MODEL.LT.PRIOR_PROB": ("float", -math.inf, 1.0, False),  # < 0: the method's default
    "MODEL.LT.GROUP_EDGES": "edges",
    "MODEL.LT.EQLV1.LAMBDA": ("float", 0.0, 1.0, False),
    "MODEL.LT.EQLV2.GAMMA": ("float", 0.0, math.inf, True),
    "MODEL.LT.EQLV2.MU": ("float", 0.0, 1.0, False),
    "MODEL.LT.EQLV2.ALPHA": ("float", 0.0, math.inf, False),
    "MODEL.LT.ECM.BG_FG_RATIO": ("float", 0.0, math.inf, True),
    "MODEL.LT.ECM.MEASURE_ITERS": ("int", 0, math.inf, False),
    "MODEL.LT.ECM.DENSE_TEST_SCORE": ("z", "trained"),
    "MODEL.LT.ECM.DENSE_PRIOR": ("trained", "z"),
    "MODEL.LT.BAGS.BIN_EDGES": "edges",
    "MODEL.LT.BAGS.BETA": ("float", 0.0, math.inf, False),
    "MODEL.LT.C2AM.SCALE": ("float", 0.0, math.inf, True),
    "MODEL.LT.C2AM.ALPHA": ("float", 0.0, math.inf, False),
    "MODEL.LT.C2AM.BACKGROUND_MARGIN": "bool",
    "MODEL.LT.EFL.SCALE_FACTOR": ("float", 0.0, math.inf, False),
    "MODEL.LT.SEESAW.P": ("float", 0.0, math.inf, False),
    "MODEL.LT.SEESAW.Q": ("float", 0.0, math.inf, False),
    "MODEL.LT.SEESAW.EPS": ("float", 0.0, math.inf, True),
    "MODEL.LT.SEESAW.LOSS_WEIGHT": ("float", 0.0, math.inf, False),
    "MODEL.LT.BOFL.ENABLED": "bool",
    "MODEL.LT.BOFL.KAPPA": ("float", 0.0, math.inf, False),
    "MODEL.LT.BOFL.ETA": ("float", 0.0, 1.0, False),
    "MODEL.LT.BOFL.BATCH_COUNTS": ("image", "batch", "none"),
    "MODEL.LT.BOFL.DEFERRED_EPOCHS": ("int", 0, math.inf, False),
    "MODEL.LT.BOFL.TOTAL_EPOCHS": ("int", 0, math.inf, False),
    "MODEL.LT.BOFL.PER_ITERATION": "bool",
    "MODEL.LT.BOFL.LINEAR_SCHEDULE": "bool",
    "MODEL.LT.BOFL.ITERS_PER_EPOCH": ("float", 0.0, math.inf, False),
    "MODEL.LT.FREEZE_ALL_BUT_CLS": "bool",
    "MODEL.LT.REINIT_CLS": "bool",
    "MODEL.LT.NORMED_MASK.TEMPERATURE": ("float", 0.0, math.inf, True),
    "MODEL.LT.NORMED_MASK.POWER": ("float", 0.0, math.inf, True),
    "MODEL.LT.LWS": "bool",
    "TEST.LT.BACKEND": ("auto", "hotcoco", "lvis"),
    "TEST.LT.MAX_DETS": ("int", 1, math.inf, False),
    "TEST.LT.AP_PROTOCOL": ("standard", "fixed"),
    "TEST.LT.TOPK_PER_CLASS": ("int", 1, math.inf, False),
    "TEST.LT.POOLED_AP": "bool",
    "TEST.LT.BOUNDARY_AP": "bool",
    "TEST.LT.BOUNDARY_DILATION": ("float", 0.0, 1.0, True),
    "TEST.LT.SAVE_RESULTS": "bool",
    "TEST.LT.CALIBRATION_GAMMA": ("float", 0.0, math.inf, False),
    "TEST.LT.CALIBRATION_TAU": ("float", 0.0, math.inf, False),
    "LT_HOOKS.PLOT_PERIOD": ("int", 0, math.inf, False),
}


def lookup_key(cfg, key):
    """The value of a dotted key, read below ``CfgNode``'s accessors (a check is not a use: see
    ``config_reads``)."""
    node = cfg
    for part in key.split("."):
        node = dict.__getitem__(node, part)
    return node


def _problem(key, value, spec):
    """None when ``value`` is allowed by ``spec``, else the sentence that names the allowed values."""
    if spec == "bool":
        return None if isinstance(value, bool) else "must be True or False"
    if spec == "edges":
        ok = (
            isinstance(value, (list, tuple))
            and len(value) > 0
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
            and all(v > 0 for v in value)
            and all(b > a for a, b in zip(value, value[1:]))
        )
        return None if ok else "must be a strictly increasing list of positive instance counts"
    if isinstance(spec[0], str) and spec[0] in ("int", "float"):
        kind, lo, hi, lo_open = spec
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind == "int":
            number = number and float(value).is_integer()
        if number and math.isfinite(value):
            if (value > lo if lo_open else value >= lo) and value <= hi:
                return None
        rng = "%s%s, %s]" % ("(" if lo_open else "[", lo, hi)
        return "must be %s in %s" % ("an integer" if kind == "int" else "a number", rng)
    return None if value in spec else "must be one of %s" % ", ".join(map(repr, spec))


def validate_lt_config(cfg, source: str = "the config"):
    """Refuse lt_detectron keys with values outside their allowed sets or ranges.

    Raises :class:`LTConfigError` that lists every offending key with its value and the allowed
    values; ``source`` (e.g. the config file) is named in the message. Called by
    ``tools/train_net.py`` and ``tools/evaluate_results.py`` when they load the config, and by
    :func:`lt_detectron.evaluation.build_lt_evaluator` and the model builders for library users.
    Returns ``cfg``.
    """
    from .losses import DENSE_LOSS_REGISTRY, ROI_LOSS_REGISTRY

    problems = []
    for key, spec in _ALLOWED.items():
        try:
            value = lookup_key(cfg, key)
        except KeyError:
            continue  # a config without lt_detectron's keys: nothing of ours to check
        why = _problem(key, value, spec)
        if why:
            problems.append("%s = %r %s" % (key, value, why))
    from .modeling.calibration import CALIBRATION_REGISTRY

    for key, registry in (
        ("MODEL.LT.ROI_LOSS", ROI_LOSS_REGISTRY),
        ("MODEL.LT.DENSE_LOSS", DENSE_LOSS_REGISTRY),
        ("TEST.LT.CALIBRATION", CALIBRATION_REGISTRY),
    ):
        try:
            value = str(lookup_key(cfg, key)).lower()
        except KeyError:
            continue
        names = registry.names() + (["none"] if registry is CALIBRATION_REGISTRY else [])
        if value not in names:
            problems.append("%s = %r must be one of %s" % (key, value, ", ".join(map(repr, names))))
    if problems:
        raise LTConfigError(
            "invalid value%s in %s:\n  %s\nSet %s to an allowed value."
            % (
                "s" if len(problems) > 1 else "",
                source,
                "\n  ".join(problems),
                "these keys" if len(problems) > 1 else "it",
            )
        )
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
    # ROI classification loss: a name of ROI_LOSS_REGISTRY (softmax | sigmoid | eqlv2 | ecm | bags | c2am | ...)
    _C.MODEL.LT.ROI_LOSS = "softmax"
    # Classifier layer: linear | cosine (ECM recipe: cosine, temperature 20, with bias)
    _C.MODEL.LT.CLASSIFIER = "linear"
    _C.MODEL.LT.COSINE_SCALE = 20.0  # temperature of the cosine classifier (CosineClassifier)
    # Prior probability for the classifier bias, b = -log((1-p)/p); 0 keeps Detectron2's init.
    # EQL v2 uses 0.001 (bias about -6.9); "auto" per-method defaults are applied when < 0.
    _C.MODEL.LT.PRIOR_PROB = -1.0
    # Instance-count group edges of the evaluation (LVIS AP[lo,hi), COCO-LT AP1-AP4) and of the logged
    # class-statistics table; BAGS' own groups are MODEL.LT.BAGS.BIN_EDGES
    _C.MODEL.LT.GROUP_EDGES = [10, 100, 1000]
    # The class statistics of DATASETS.TRAIN when that data is not here (inference elsewhere): a run's
    # OUTPUT_DIR/class_stats.json or a checkpoint it wrote. The trainer sets it in config.yaml.
    _C.MODEL.LT.CLASS_STATS_FILE = ""

    # EQL v1 (MODEL.LT.ROI_LOSS eqlv1): on foreground ROIs, no negative term for the classes whose
    # image frequency (images containing the class / training images) is below LAMBDA
    _C.MODEL.LT.EQLV1 = CN()
    _C.MODEL.LT.EQLV1.LAMBDA = 1.76e-3  # the paper's lambda on LVIS v0.5

    _C.MODEL.LT.EQLV2 = CN()
    _C.MODEL.LT.EQLV2.GAMMA = 12.0  # steepness of the mapping f(g)
    _C.MODEL.LT.EQLV2.MU = 0.8  # centre of f(g)
    _C.MODEL.LT.EQLV2.ALPHA = 4.0  # positive up-weighting 1 + alpha (1 - f(g))

    _C.MODEL.LT.ECM = CN()
    _C.MODEL.LT.ECM.BG_FG_RATIO = 6.3313  # background:foreground ROI ratio (authors' constant)
    _C.MODEL.LT.ECM.MEASURE_ITERS = 0  # > 0: measure the ratio over the first K iterations
    # Dense heads' test score: "z" sigma(z) (as the authors' two-stage code) | "trained" sigma(2z + delta),
    # the probability the one-stage loss is trained on (per class a monotone map of sigma(z))
    _C.MODEL.LT.ECM.DENSE_TEST_SCORE = "z"
    # Dense heads' bias init: "trained" sigma(2b + delta) = PRIOR_PROB [interp; "z" (sigma(b) = PRIOR_PROB, the
    # other losses' init) left tiny CenterNet stuck for 2,400 of 4,500 iterations in 1 of 3 seeds]
    _C.MODEL.LT.ECM.DENSE_PRIOR = "trained"

    _C.MODEL.LT.BAGS = CN()
    _C.MODEL.LT.BAGS.BIN_EDGES = [10, 100, 1000]  # instance-count bins of the groups
    _C.MODEL.LT.BAGS.BETA = 8.0  # "others" sampled per group: beta x positives

    _C.MODEL.LT.C2AM = CN()
    _C.MODEL.LT.C2AM.SCALE = 30.0  # cosine scale s
    _C.MODEL.LT.C2AM.ALPHA = 0.5  # margin strength
    _C.MODEL.LT.C2AM.BACKGROUND_MARGIN = True  # [interp] background is a cosine class with margins

    # EFL (MODEL.LT.DENSE_LOSS efl): gamma_j = gamma_b + s (1 - g_j), gamma_b = the detector's focal gamma
    _C.MODEL.LT.EFL = CN()
    _C.MODEL.LT.EFL.SCALE_FACTOR = 8.0  # s

    # Seesaw (MODEL.LT.ROI_LOSS seesaw; C + 2 logits: classes, then [object, background])
    _C.MODEL.LT.SEESAW = CN()
    _C.MODEL.LT.SEESAW.P = 0.8  # mitigation factor (N_j / N_i)^p when N_j < N_i (0: off)
    _C.MODEL.LT.SEESAW.Q = (
        2.0  # compensation factor (sigma_j / sigma_i)^q when sigma_j > sigma_i (0: off)
    )
    _C.MODEL.LT.SEESAW.EPS = 0.01  # lower bound of sigma_i in the compensation ratio
    _C.MODEL.LT.SEESAW.LOSS_WEIGHT = 1.0  # weight of both terms (classes and objectness)

    # BOFL (dense heads natively; ROI heads with a sigmoid classifier as an extension)
    _C.MODEL.LT.BOFL = CN()
    _C.MODEL.LT.BOFL.ENABLED = False
    _C.MODEL.LT.BOFL.KAPPA = 1.0  # intensity of the dataset-level weight (0.05 for COCO-LT/LVIS)
    _C.MODEL.LT.BOFL.ETA = (
        0.999  # batch-wise factor (0.8 CenterNet per image, 0.999 FCOS per batch)
    )
    _C.MODEL.LT.BOFL.BATCH_COUNTS = "batch"  # "image" (CenterNet) | "batch" (FCOS) | "none"
    _C.MODEL.LT.BOFL.DEFERRED_EPOCHS = 3  # lambda = 0 for the first d epochs (DRW)
    _C.MODEL.LT.BOFL.TOTAL_EPOCHS = 0  # 0: derived from SOLVER.MAX_ITER and the dataset length
    _C.MODEL.LT.BOFL.PER_ITERATION = False  # ablation: update lambda every iteration
    _C.MODEL.LT.BOFL.LINEAR_SCHEDULE = (
        True  # False: lambda = 1 from the start (ablation "WF" without LS)
    )
    # Iterations per epoch (the schedule's unit). 0: derived from DATASETS.TRAIN when the model is built
    # (the training dicts are loaded); the trainer fills it from its single parse, so config.yaml records it
    _C.MODEL.LT.BOFL.ITERS_PER_EPOCH = 0.0

    # Decoupled training (BAGS recipe): freeze all but the classification layer(s)
    _C.MODEL.LT.FREEZE_ALL_BUT_CLS = False
    # re-initialise cls_score when training starts from MODEL.WEIGHTS (not when resuming): BAGS
    # (its shape changes) and cRT (same shape, retrained from scratch)
    _C.MODEL.LT.REINIT_CLS = False
    # LWS (Kang et al. 2020): cls_score gets a learnable per-class scale of its weight rows (init 1);
    # with FREEZE_ALL_BUT_CLS only the scales train
    _C.MODEL.LT.LWS = False

    # Normalised mask head (MODEL.ROI_MASK_HEAD.NAME "NormedMaskRCNNConvUpsampleHead", read by its
    # from_config): the 1x1 mask predictor is a cosine-normalised NormedConv2d (mmdetection's)
    _C.MODEL.LT.NORMED_MASK = CN()
    _C.MODEL.LT.NORMED_MASK.TEMPERATURE = 20.0  # tau: scale of the normalised input (authors: 20)
    _C.MODEL.LT.NORMED_MASK.POWER = 1.0  # p: power of the input and weight norms

    # ---------------------------------------------------------------- dense heads
    # Classification loss of RetinaNet / FCOS / CenterNet: a name of DENSE_LOSS_REGISTRY
    # (focal | bofl | eqlv2 | ecm | ...); the method keys are the MODEL.LT.<METHOD> nodes above
    _C.MODEL.LT.DENSE_LOSS = "focal"

    # ---------------------------------------------------------------- tiny backbone (demo)
    _C.MODEL.TINY = CN()
    _C.MODEL.TINY.WIDTHS = [16, 32, 64, 96]  # channels of the stages (strides 4, 8, 16, 32)
    _C.MODEL.TINY.OUT_FEATURES = ["t3", "t4", "t5"]

    # ---------------------------------------------------------------- evaluation, hooks
    _C.TEST.LT = CN()
    _C.TEST.LT.BACKEND = "auto"  # LVIS matching backend: auto | lvis (lvis-api reference)
    _C.TEST.LT.MAX_DETS = 300
    # ---- evaluation protocol (lt_detectron/evaluation; docs/evaluation.md) --------------------
    # "standard": the LVIS protocol, TEST.LT.MAX_DETS detections per image.
    # "fixed": Fixed AP (Dave et al. 2021): no per-image cap; the TEST.LT.TOPK_PER_CLASS highest-scoring
    # detections of each class over the whole dataset are evaluated; the ROI box predictor keeps enough
    # detections per class at inference (lt_detectron/modeling/topk_inference.py).
    _C.TEST.LT.AP_PROTOCOL = "standard"
    _C.TEST.LT.TOPK_PER_CLASS = 10000  # "fixed": detections kept per class over the dataset
    _C.TEST.LT.POOLED_AP = False  # also report pooled AP (APpool, APpool-r/c/f; LVIS datasets)
    _C.TEST.LT.BOUNDARY_AP = (
        False  # masks: also report Boundary AP (task "boundary"; needs faster-coco-eval)
    )
    _C.TEST.LT.BOUNDARY_DILATION = (
        0.02  # Boundary IoU dilation, as a fraction of the image diagonal
    )
    _C.TEST.LT.SAVE_RESULTS = (
        True  # write {lvis,coco}_instances_results.json into the evaluator's output folder
    )
    # ---- test-time calibration of the ROI classifier (lt_detectron/modeling/calibration.py;
    # docs/methods.md#post-hoc-calibration), read by the ROI box predictor; the checkpoint is unchanged.
    # "none" | "norcal" (scores / N_c^GAMMA, N_c training images of class c, renormalised) |
    # "logit_adjustment" (logits - TAU log prior, prior from training instances) |
    # "tau_norm" (linear classifier rows w_c / ||w_c||^TAU). tools/calibrate.py picks the value.
    _C.TEST.LT.CALIBRATION = "none"
    _C.TEST.LT.CALIBRATION_GAMMA = 0.0  # NorCal's gamma (0: identity)
    _C.TEST.LT.CALIBRATION_TAU = 0.0  # logit adjustment's / tau-norm's tau (0: identity)
    # ---------------------------------------------------------------------------------------------
    _C.LT_HOOKS = CN()
    _C.LT_HOOKS.PLOT_PERIOD = (
        0  # > 0: write method plots (weight norms, EQL v2 ratios) every N iters
    )


def _add_dense_keys(cfg):
    """``MODEL.FCOS.*`` and ``MODEL.CENTERNET.*`` (v0.6's FCOS is LazyConfig-only, CenterNet absent), with the papers'
    defaults; RetinaNet keeps Detectron2's ``MODEL.RETINANET.*``. Each node is added once."""
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
        _C.MODEL.CENTERNET.TOPK_TEST = (
            100  # peaks kept per image (capped by TEST.DETECTIONS_PER_IMAGE)
        )
        _C.MODEL.CENTERNET.SCORE_THRESH_TEST = 0.0
    return cfg
