"""Configs for tests, in the spirit of ``detectron2/utils/testing.py``'s model helpers.

- :func:`lt_cfg`: Detectron2's defaults with lt_detectron's keys, a config file merged, overrides.
- :func:`tiny_dense_cfg` / :func:`build_tiny_dense`: a CPU-sized one-stage detector (tiny FPN,
  ``TINY_DENSE_COUNTS`` classes of a registered empty dataset with those training counts) for
  RetinaNet / FCOS / CenterNet with any dense loss; :func:`tiny_dense_inputs`: random images with
  three boxes each;
  :func:`build_tiny_mask_rcnn`: a CPU-sized Mask R-CNN (random weights) in eval mode.
"""

import torch

__all__ = [
    "TINY_DENSE_COUNTS",
    "TINY_DENSE_DATASET",
    "build_tiny_dense",
    "build_tiny_mask_rcnn",
    "lt_cfg",
    "tiny_dense_cfg",
    "tiny_dense_inputs",
]


def lt_cfg(config_file=None, *opts):
    """``get_cfg()`` + :func:`~lt_detectron.config.add_lt_config`, then ``config_file`` (a path)
    merged when given, then ``opts`` (``KEY, VALUE, ...`` as on the command line)."""
    from detectron2.config import get_cfg

    from ...config import add_lt_config

    cfg = add_lt_config(get_cfg())
    if config_file is not None:
        cfg.merge_from_file(str(config_file))
    cfg.merge_from_list(list(opts))
    return cfg


TINY_DENSE_DATASET = "dense_test_tiny_train"
TINY_DENSE_COUNTS = [100, 50, 10, 3, 0]  # training instances per class; class 4 has none


def _register_tiny_dense_dataset():
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if TINY_DENSE_DATASET not in DatasetCatalog.list():
        C = len(TINY_DENSE_COUNTS)
        DatasetCatalog.register(TINY_DENSE_DATASET, lambda: [])
        MetadataCatalog.get(TINY_DENSE_DATASET).set(
            thing_classes=["c%d" % i for i in range(C)],
            class_stats={
                "instance_counts": TINY_DENSE_COUNTS,
                "image_counts": [40, 20, 5, 2, 0],
                "num_images": 50,
            },
        )


def tiny_dense_cfg(arch="FCOS", loss="focal"):
    """A CPU-sized config: tiny FPN (p2..p6, 32 channels), 5 classes, BOFL over 4 epochs (1 deferred) of
    10 iterations."""
    from ...config import add_lt_config
    from ...modeling import backbone  # noqa: F401  (registers build_tiny_fpn_backbone)

    _register_tiny_dense_dataset()
    C = len(TINY_DENSE_COUNTS)
    cfg = lt_cfg()
    add_lt_config(cfg)  # idempotent
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.META_ARCHITECTURE = arch
    cfg.MODEL.BACKBONE.NAME = "build_tiny_fpn_backbone"
    cfg.MODEL.TINY.WIDTHS = [8, 16, 16, 16]
    cfg.MODEL.TINY.OUT_FEATURES = ["t2", "t3", "t4", "t5"]
    cfg.MODEL.FPN.IN_FEATURES = ["t2", "t3", "t4", "t5"]
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.LT.DENSE_LOSS = loss
    cfg.MODEL.LT.BOFL.TOTAL_EPOCHS = 4
    cfg.MODEL.LT.BOFL.DEFERRED_EPOCHS = 1
    cfg.MODEL.LT.BOFL.ETA = 0.8
    cfg.MODEL.LT.BOFL.BATCH_COUNTS = "image" if arch == "CenterNet" else "batch"
    cfg.MODEL.LT.BOFL.ITERS_PER_EPOCH = 10.0
    cfg.MODEL.RETINANET.NUM_CLASSES = C
    cfg.MODEL.RETINANET.IN_FEATURES = ["p3", "p4", "p5"]
    cfg.MODEL.RETINANET.NUM_CONVS = 1
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[16], [32], [64]]
    cfg.MODEL.FCOS.NUM_CLASSES = C
    cfg.MODEL.FCOS.IN_FEATURES = ["p3", "p4", "p5"]
    cfg.MODEL.FCOS.SIZES_OF_INTEREST = [16, 32]
    cfg.MODEL.FCOS.NUM_CONVS = 1
    cfg.MODEL.CENTERNET.NUM_CLASSES = C
    cfg.MODEL.CENTERNET.IN_FEATURE = "p2"
    cfg.MODEL.CENTERNET.HEAD_CONV = 16
    cfg.DATASETS.TRAIN = (TINY_DENSE_DATASET,)
    cfg.DATASETS.TEST = ()
    return cfg


def build_tiny_dense(arch, loss, seed=0):
    """The model of :func:`tiny_dense_cfg`, its weights drawn after ``torch.manual_seed(seed)``."""
    from detectron2.modeling import build_model

    torch.manual_seed(seed)
    return build_model(tiny_dense_cfg(arch, loss))


def tiny_dense_inputs(n=2, h=64, w=64, with_boxes=True, seed=0, out_hw=None):
    """``n`` random ``h x w`` images (Detectron2's input dicts), three boxes each of classes
    ``0, 1 + i, 3`` (or none); ``out_hw``: the requested output ``height, width``."""
    from detectron2.structures import Boxes, Instances

    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        inst = Instances((h, w))
        if with_boxes:
            inst.gt_boxes = Boxes(
                torch.tensor(
                    [[4.0, 6.0, 30.0, 28.0], [20.0, 10.0, 60.0, 58.0], [40.0, 2.0, 52.0, 14.0]]
                )
            )
            inst.gt_classes = torch.tensor([0, 1 + i, 3])
        else:
            inst.gt_boxes = Boxes(torch.zeros(0, 4))
            inst.gt_classes = torch.zeros(0, dtype=torch.long)
        d = {"image": torch.rand(3, h, w, generator=g) * 255, "instances": inst}
        if out_hw is not None:
            d["height"], d["width"] = out_hw
        out.append(d)
    return out


def build_tiny_mask_rcnn(mask_on=True):
    """A CPU-sized Mask R-CNN (tiny FPN, 5 classes, random weights, every detection kept)."""
    from detectron2.modeling import build_model

    from ...modeling import backbone  # noqa: F401  (registers the tiny backbone)

    levels = ["t2", "t3", "t4", "t5"]
    cfg = lt_cfg(
        None,
        *("MODEL.DEVICE", "cpu", "MODEL.META_ARCHITECTURE", "GeneralizedRCNN"),
        *("MODEL.BACKBONE.NAME", "build_tiny_fpn_backbone", "MODEL.TINY.WIDTHS", [8, 16, 16, 16]),
        *("MODEL.TINY.OUT_FEATURES", levels, "MODEL.FPN.IN_FEATURES", levels),
        *("MODEL.FPN.OUT_CHANNELS", 16, "MODEL.MASK_ON", mask_on),
        *("MODEL.ANCHOR_GENERATOR.SIZES", [[8], [16], [32], [64], [128]]),
        *("MODEL.RPN.IN_FEATURES", ["p2", "p3", "p4", "p5", "p6"]),
        *("MODEL.RPN.POST_NMS_TOPK_TEST", 50, "MODEL.ROI_HEADS.NUM_CLASSES", 5),
        *("MODEL.ROI_HEADS.NAME", "StandardROIHeads"),
        *("MODEL.ROI_HEADS.IN_FEATURES", ["p2", "p3", "p4", "p5"]),
        *(
            "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
            0.0,
            "MODEL.ROI_BOX_HEAD.NAME",
            "FastRCNNConvFCHead",
        ),
        *("MODEL.ROI_BOX_HEAD.NUM_FC", 1, "MODEL.ROI_BOX_HEAD.FC_DIM", 32),
        *("MODEL.ROI_MASK_HEAD.NUM_CONV", 1, "MODEL.ROI_MASK_HEAD.CONV_DIM", 8),
        *("INPUT.MIN_SIZE_TEST", 0),
    )
    torch.manual_seed(0)
    return build_model(cfg).eval()
