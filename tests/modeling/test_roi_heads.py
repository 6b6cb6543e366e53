"""LongTailROIHeads / LongTailCascadeROIHeads inside GeneralizedRCNN: Mask R-CNN and Cascade
train and infer with every loss; each cascade stage keeps its own EQL v2 state."""

import os

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances, PolygonMasks
from detectron2.utils.events import EventStorage

import lt_detectron  # noqa: F401
from lt_detectron.losses import ROI_LOSS_REGISTRY
from lt_detectron.utils.testing import lt_cfg

from tests._data import ROOT

BASE = os.path.join(ROOT, "configs", "lt_shapes", "Base-FasterRCNN-Tiny.yaml")


def tiny_cfg(loss, *opts):
    cfg = lt_cfg(BASE)
    cfg.merge_from_list(["MODEL.LT.ROI_LOSS", loss] + list(opts))
    return cfg


def batch(with_instances=True, n=2, size=96):
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        img = torch.randint(0, 255, (3, size, size), generator=g, dtype=torch.uint8)
        inst = Instances((size, size))
        if with_instances:
            boxes = torch.tensor([[10.0, 10.0, 40.0, 45.0], [50.0, 20.0, 80.0, 70.0]])
            inst.gt_boxes = Boxes(boxes)
            inst.gt_classes = torch.tensor([i, 23])
            inst.gt_masks = PolygonMasks(
                [[[b[0], b[1], b[2], b[1], b[2], b[3], b[0], b[3]]] for b in boxes.tolist()]
            )
        else:
            inst.gt_boxes = Boxes(torch.zeros(0, 4))
            inst.gt_classes = torch.zeros(0, dtype=torch.long)
            inst.gt_masks = PolygonMasks([])
        out.append({"image": img, "instances": inst, "height": size, "width": size})
    return out


def train_and_infer(model, data):
    model.train()
    with EventStorage(0):
        losses = model(data)
    total = sum(losses.values())
    assert torch.isfinite(total), losses
    total.backward()
    model.eval()
    with torch.no_grad():
        out = model(
            [{"image": d["image"], "height": d["height"], "width": d["width"]} for d in data]
        )
    return losses, out


@pytest.mark.parametrize(
    "loss",
    # every registered method; softmax in the quick loop, the others (a Mask R-CNN each) slow
    [
        pytest.param(n, marks=() if n == "softmax" else pytest.mark.slow)
        for n in ROI_LOSS_REGISTRY.names()
    ],
)
def test_mask_rcnn_with_long_tail_heads(loss):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(loss, "MODEL.MASK_ON", "True"))
    losses, out = train_and_infer(model, batch())
    assert "loss_mask" in losses
    assert out[0]["instances"].has("pred_masks") or len(out[0]["instances"]) == 0
    _, out = train_and_infer(model, batch(with_instances=False))


def test_cascade_stages_keep_their_own_eqlv2_state():
    torch.manual_seed(0)
    cfg = tiny_cfg(
        "eqlv2",
        "MODEL.ROI_HEADS.NAME",
        "LongTailCascadeROIHeads",
        "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG",
        "True",
    )
    model = build_model(cfg)
    predictors = model.roi_heads.box_predictor
    assert len(predictors) == 3
    losses_modules = [p.cls_loss for p in predictors]
    assert len({id(m) for m in losses_modules}) == 3
    train_and_infer(model, batch())
    stats = [m.pos_grad.clone() for m in losses_modules]
    assert all(s.sum() > 0 for s in stats)
    assert not torch.equal(stats[0], stats[1]) and not torch.equal(stats[1], stats[2])
    sd = model.state_dict()
    for i in range(3):
        assert "roi_heads.box_predictor.%d.cls_loss.pos_neg" % i in sd


@pytest.mark.parametrize("heads", ["LongTailROIHeads", "LongTailCascadeROIHeads"])
def test_heads_pass_the_gt_classes_of_every_image(heads):
    """The predictors' losses get the targets' classes as an argument (BOFL's per-image counts need them)."""
    torch.manual_seed(0)
    cfg = tiny_cfg(
        "sigmoid",
        "MODEL.ROI_HEADS.NAME",
        heads,
        "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG",
        "True",
        "MODEL.LT.BOFL.ENABLED",
        "True",
        "MODEL.LT.BOFL.BATCH_COUNTS",
        "image",
        "MODEL.LT.BOFL.ITERS_PER_EPOCH",
        "10.0",
        "MODEL.LT.BOFL.TOTAL_EPOCHS",
        "2",
        "MODEL.LT.BOFL.DEFERRED_EPOCHS",
        "0",
    )
    model = build_model(cfg)
    predictors = model.roi_heads.box_predictor
    predictors = list(predictors) if isinstance(predictors, torch.nn.ModuleList) else [predictors]
    seen = []
    for p in predictors:
        p.losses = lambda *a, _orig=p.losses, **k: (
            seen.append(k.get("gt_classes_per_image")) or _orig(*a, **k)
        )
    losses, _ = train_and_infer(model, batch())
    assert len(seen) == len(predictors)
    for gts in seen:
        assert [g.tolist() for g in gts] == [[0, 23], [1, 23]]
