"""Class-selected mask prediction at inference (lt_detectron/modeling/class_selected_masks.py): the masks equal
Detectron2's all-class path (``mask_rcnn_inference`` over every predictor channel) for the shipped
LVIS heads (standard, cascade, class-agnostic), the whole model's output is unchanged, unknown
predictors and heads fall back to the full computation, and training does not use the new path."""

import copy
import os
import types

import pytest
import torch
from detectron2.layers import Conv2d, ShapeSpec
from detectron2.layers.mask_ops import _do_paste_mask
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.modeling.roi_heads import StandardROIHeads, build_mask_head
from detectron2.modeling.roi_heads.mask_head import mask_rcnn_inference
from detectron2.structures import Boxes, Instances, PolygonMasks
from detectron2.utils.events import EventStorage
from torch import nn

import lt_detectron.modeling.class_selected_masks as mh
from lt_detectron.modeling import class_selected_logits, class_selected_mask_inference
from lt_detectron.utils.testing import lt_cfg, random_images, random_mask_rcnn

from tests._data import ROOT

LVIS = os.path.join(ROOT, "configs", "lvis_v1")
SOFTMAX = os.path.join(LVIS, "softmax_mask_rcnn_R_50_FPN_1x.yaml")
HEADS = {
    "standard": (SOFTMAX,),
    "cascade": (os.path.join(LVIS, "eqlv2_cascade_mask_rcnn_R_50_FPN_1x.yaml"),),
    "class_agnostic": (SOFTMAX, "MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK", True),
    # the normalised mask head (its predictor computes the selected channels: forward_classes)
    "normed": (os.path.join(LVIS, "ecm_mask_rcnn_R_50_FPN_1x.yaml"),),
}
TOL = 1e-6  # float32 summation order (the conv and the batched product add in another order)


def all_class_mask(roi_heads):
    """Detectron2's own ``_forward_mask`` (all class channels) on this ROI heads object only."""
    roi_heads._forward_mask = types.MethodType(StandardROIHeads._forward_mask, roi_heads)


def assert_same_masks(ref, new, tol=TOL):
    """Probabilities within ``tol``; 0.5-thresholded bitmaps identical wherever the reference is
    not within ``tol`` of 0.5 (elsewhere a float summation order could decide either way)."""
    assert ref.shape == new.shape and ref.dtype == new.dtype
    if ref.numel() == 0:
        return
    assert (ref - new).abs().max().item() <= tol
    clear = (ref - 0.5).abs() > tol
    assert torch.equal((ref > 0.5)[clear], (new > 0.5)[clear])
    assert clear.float().mean() > 0.999  # the comparison covers (almost) every pixel


_MODELS = {}


def model_for(kind):
    if kind not in _MODELS:
        _MODELS[kind] = random_mask_rcnn(*HEADS[kind], mask_logit_std=0.05)
    return _MODELS[kind]


def given_boxes(classes_per_image, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for classes in classes_per_image:
        n = len(classes)
        xy = torch.rand(n, 2, generator=g) * size / 2
        inst = Instances((size, size))
        inst.pred_boxes = Boxes(torch.cat([xy, xy + 4 + torch.rand(n, 2, generator=g) * 28], 1))
        inst.pred_classes = torch.tensor(classes, dtype=torch.long)
        inst.scores = torch.rand(n, generator=g)
        out.append(inst)
    return out


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_class_selected_masks_equal_detectron2(kind):
    """Standard, cascade and class-agnostic LVIS heads (1203 classes): repeated classes, the
    first and last class, and an image with no detection."""
    model = model_for(kind)
    rh = model.roi_heads
    assert isinstance(rh, mh.ClassSelectedMaskMixin)
    with torch.no_grad():
        features = model.backbone(model.preprocess_image(random_images(3, 64, 64)).tensor)
        instances = given_boxes([[5, 5, 0, 1202, 17, 5, 300], [], [42]])
        ref = copy.deepcopy(instances)
        StandardROIHeads._forward_mask(rh, features, ref)  # Detectron2's, all channels
        predictor = rh.mask_head.predictor
        if predictor.out_channels > 1:  # the full predictor must not run
            predictor.forward = lambda x: pytest.fail("all-class predictor called")
        try:
            new = rh.forward_with_given_boxes(features, instances)
        finally:
            predictor.__dict__.pop("forward", None)
    for r, n in zip(ref, new):
        assert n.pred_masks.shape == (len(n), 1, 28, 28)
        assert_same_masks(r.pred_masks, n.pred_masks)
    with torch.no_grad():  # no detection in any image (N = 0 in all)
        none = rh.forward_with_given_boxes(features, given_boxes([[], [], []]))
    assert [tuple(i.pred_masks.shape) for i in none] == [(0, 1, 28, 28)] * 3


def test_whole_model_inference_identical():
    """pred_masks after detector_postprocess (and boxes, scores, classes) equal the all-class
    model's on a small input where every image reaches its detection limit."""
    opts = ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0, "TEST.DETECTIONS_PER_IMAGE", 30]
    opts += [
        "INPUT.MIN_SIZE_TEST",
        64,
        "INPUT.MAX_SIZE_TEST",
        64,
        "MODEL.RPN.POST_NMS_TOPK_TEST",
        10,
    ]
    model = random_mask_rcnn(SOFTMAX, *opts, mask_logit_std=0.05)
    inputs = random_images(2, 64, 64)
    with torch.no_grad():
        raw = model.inference(inputs, do_postprocess=False)
        all_class_mask(model.roi_heads)
        raw_ref = model.inference(inputs, do_postprocess=False)
    for rr, rn in zip(raw_ref, raw):
        assert len(rn) == 30 and rn.pred_classes.unique().numel() > 1
        for field in ("pred_boxes", "scores", "pred_classes"):
            a, b = rr.get(field), rn.get(field)
            a, b = (a.tensor, b.tensor) if field == "pred_boxes" else (a, b)
            assert torch.equal(a, b), field
        assert_same_masks(rr.pred_masks, rn.pred_masks)
        # the pasted soft masks decide the bitmaps: equal wherever they are clear of 0.5
        soft, _ = _do_paste_mask(rr.pred_masks, rr.pred_boxes.tensor, 64, 64, skip_empty=False)
        clear = (soft - 0.5).abs() > 1e-5
        r = detector_postprocess(copy.deepcopy(rr), 64, 64)
        n = detector_postprocess(copy.deepcopy(rn), 64, 64)
        assert n.pred_masks.dtype == torch.bool and clear.float().mean() > 0.999
        assert torch.equal(r.pred_masks[clear], n.pred_masks[clear])


def test_class_selected_logits_plain_conv_and_empty():
    """A plain 1x1 conv (torch's and Detectron2's, with and without bias) is gathered: same
    logits as its full output's channels, N = 0 included."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 8, 5, 5, generator=g)
    classes = torch.tensor([3, 3, 0, 9, 1, 3])
    for conv in (nn.Conv2d(8, 10, 1), nn.Conv2d(8, 10, 1, bias=False), Conv2d(8, 10, 1)):
        conv.forward = lambda *_: pytest.fail("full conv called")  # instance-level: not a type
        got = class_selected_logits(conv, x, classes)
        del conv.forward
        want = torch.stack([conv(x)[i, c] for i, c in enumerate(classes.tolist())])[:, None]
        assert got.shape == (6, 1, 5, 5)
        assert (got - want).abs().max() <= TOL
        empty = class_selected_logits(conv, x[:0], classes[:0])
        assert empty.shape == (0, 1, 5, 5)


class _Scaled(nn.Conv2d):
    """A 1x1 conv subclass with its own forward: not a plain conv, so computed in full."""

    calls = 0

    def forward(self, x):
        type(self).calls += 1
        return 2 * super().forward(x)


class _ByClass(nn.Conv2d):
    """A predictor with the ``forward_classes`` protocol."""

    def forward_classes(self, x, classes):
        self.seen = classes
        return torch.full((len(x), 1) + x.shape[2:], 7.0)


def test_fallback_unknown_predictor():
    """Unknown predictors (a conv subclass with its own forward, a hooked conv, a 3x3 conv, a
    norm-carrying conv) are computed in full and their classes picked; forward_classes is called."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 8, 5, 5, generator=g)
    classes = torch.tensor([2, 0, 2, 5])
    hooked = nn.Conv2d(8, 6, 1)
    hooked.register_forward_hook(lambda m, i, o: o + 1)
    unknown = [_Scaled(8, 6, 1), hooked, nn.Conv2d(8, 6, 3, padding=1)]
    unknown.append(Conv2d(8, 6, 1, norm=nn.GroupNorm(2, 6)))
    calls = _Scaled.calls
    for p in unknown:
        assert not mh._is_plain_1x1_conv(p)
        want = p(x)[torch.arange(4), classes][:, None]
        assert torch.equal(class_selected_logits(p, x, classes), want)
    assert _Scaled.calls == calls + 2  # once for the reference, once in the fallback
    by_class = _ByClass(8, 6, 1)
    out = class_selected_logits(by_class, x, classes)
    assert torch.equal(by_class.seen, classes) and torch.all(out == 7.0)


def test_fallback_unknown_mask_head():
    """A mask head with its own layers runs its own forward; one with Detectron2's layout and a
    predictor of unknown type gives Detectron2's masks through the full predictor."""
    cfg = lt_cfg(SOFTMAX, "MODEL.ROI_HEADS.NUM_CLASSES", 7)
    torch.manual_seed(0)
    head = build_mask_head(cfg, ShapeSpec(channels=256, height=14, width=14)).eval()
    x = torch.randn(3, 256, 14, 14)
    head.predictor = _Scaled(256, 7, 1)  # replaces the last layer of the sequence
    assert head[-1] is head.predictor and mh._selectable(head)
    (want,) = given_boxes([[6, 0, 6]])
    mask_rcnn_inference(head.layers(x), [want])
    calls = _Scaled.calls
    (got,) = class_selected_mask_inference(head, x, given_boxes([[6, 0, 6]]))
    assert _Scaled.calls == calls + 1
    assert_same_masks(want.pred_masks, got.pred_masks)

    class OwnLayers(type(head)):
        def layers(self, x):
            return super().layers(x).flip(-1)

    own = OwnLayers(cfg, ShapeSpec(channels=256, height=14, width=14)).eval()
    assert not mh._selectable(own)
    (want,) = given_boxes([[1, 2, 3]])
    mask_rcnn_inference(own.layers(x), [want])
    (got,) = class_selected_mask_inference(own, x, given_boxes([[1, 2, 3]]))
    assert torch.equal(want.pred_masks, got.pred_masks)


def test_training_losses_unchanged(monkeypatch):
    """The training forward takes Detectron2's mask branch: same losses as with the all-class
    branch, and the class-selected path is never called."""
    model = model_for("standard")
    monkeypatch.setattr(
        mh, "class_selected_mask_inference", lambda *a: pytest.fail("used in training")
    )
    size = 64
    boxes = torch.tensor([[4.0, 6.0, 40.0, 50.0], [20.0, 10.0, 60.0, 30.0]])
    inst = Instances((size, size), gt_boxes=Boxes(boxes), gt_classes=torch.tensor([3, 1100]))
    inst.gt_masks = PolygonMasks([[[b[0], b[1], b[2], b[1], b[2], b[3]]] for b in boxes.tolist()])
    (inp,) = random_images(1, size, size)
    data = [dict(inp, instances=inst)]
    losses = []
    for path in ("mixin", "detectron2"):
        m = copy.deepcopy(model)
        if path == "detectron2":
            all_class_mask(m.roi_heads)
        m.train()
        torch.manual_seed(0)
        with EventStorage(0):
            losses.append({k: v.item() for k, v in m(data).items()})
    assert "loss_mask" in losses[0] and losses[0] == losses[1]
