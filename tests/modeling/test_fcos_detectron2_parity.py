"""Our FCOS against Detectron2 v0.6's (``detectron2/modeling/meta_arch/fcos.py``), piece by piece, on random
inputs. The pieces ours takes from Detectron2 (points, labels, centerness targets, box transform, per-level
decode) give the numbers of the FCOS rule computed here independently; the pieces we keep (assignment,
loss normalisers and centerness weighting, inference threshold and clipping) differ from Detectron2's
exactly as lt_detectron/modeling/dense/fcos.py's docstring says, and agree where the rules coincide."""

import math

import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import batched_nms
from detectron2.modeling import build_model
from detectron2.modeling.meta_arch.fcos import FCOS as Detectron2FCOS
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from fvcore.nn import giou_loss, sigmoid_focal_loss

from lt_detectron.modeling.dense.fcos import FCOS
from lt_detectron.utils.testing import tiny_dense_cfg

C = 5
HW = (256, 256)


def _model(sizes=(64, 128), radius=1.5):
    """p3-p5 (strides 8, 16, 32); sizes (64, 128) = Detectron2's fixed ranges (4 s, 8 s) at these strides."""
    cfg = tiny_dense_cfg("FCOS", "focal")
    cfg.MODEL.FCOS.SIZES_OF_INTEREST = list(sizes)
    cfg.MODEL.FCOS.CENTER_SAMPLING_RADIUS = radius
    torch.manual_seed(0)
    return build_model(cfg)


def _anchors(model, hw=HW):
    return model.anchor_generator(
        [torch.zeros(1, 1, hw[0] // s, hw[1] // s) for s in model.strides]
    )


def _inst(boxes, classes):
    inst = Instances(HW)
    inst.gt_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.gt_classes = torch.as_tensor(classes, dtype=torch.long)
    return inst


def _random_gt(g, n):
    """n boxes of 8-200 px (continuous coordinates, no ties) inside the image."""
    wh = torch.rand(n, 2, generator=g) * 192 + 8
    xy = torch.rand(n, 2, generator=g) * (torch.tensor(HW, dtype=torch.float32) - wh)
    return _inst(torch.cat([xy, xy + wh], dim=1), torch.randint(0, C, (n,), generator=g))


def test_fcos_subclasses_detectron2s_and_keeps_its_checkpoint_keys():
    model = _model()
    assert isinstance(model, Detectron2FCOS)
    assert FCOS.compute_ctrness_targets is Detectron2FCOS.compute_ctrness_targets
    assert not [
        k for k in model.state_dict() if not k.startswith(("backbone.", "head."))
    ]  # no anchor buffers


def test_points_are_detectron2s_at_the_cell_centres():
    model = _model()
    d2 = Detectron2FCOS(
        backbone=model.backbone,
        head=model.head,
        head_in_features=["p3", "p4", "p5"],
        num_classes=C,
        pixel_mean=[0.0] * 3,
        pixel_std=[1.0] * 3,
    )
    feats = [torch.zeros(1, 1, 3, 4) for _ in model.strides]
    for s, ours, theirs in zip(
        model.strides, model.anchor_generator(feats), d2.anchor_generator(feats)
    ):
        expect = [
            [(j + 0.5) * s, (i + 0.5) * s] for i in range(3) for j in range(4)
        ]  # FCOS: j s + s // 2
        assert ours.get_centers().tolist() == expect
        assert (
            (ours.tensor[:, 2] - ours.tensor[:, 0]).eq(s).all()
        )  # width = stride (unit of the radius)
        assert torch.equal(theirs.tensor, ours.tensor)


@pytest.mark.parametrize("seed", range(4))
def test_assignment_equals_detectron2s_where_the_rules_coincide(seed):
    """Ranges (4 s, 8 s), radius 1.5, continuous boxes (no point on a range edge): same matched indices."""
    model = _model()
    anchors = _anchors(model)
    g = torch.Generator().manual_seed(seed)
    gt = [_random_gt(g, 6), _random_gt(g, 3)]
    ours = model.match_anchors(anchors, gt)
    theirs = Detectron2FCOS.match_anchors(model, anchors, gt)
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
        assert (a >= 0).sum() > 10


def test_assignment_differs_from_detectron2s_where_documented():
    model = _model()
    anchors = _anchors(model)
    # 1. closed ranges: max(l, t, r, b) = 64 = S_0 exactly at the p3 point (68, 68) -> ours positive, d2 not
    gt = [_inst([[4, 4, 132, 132]], [3])]
    p = 8 * 32 + 8  # p3 index of (68, 68)
    assert Boxes.cat(anchors).get_centers()[p].tolist() == [68, 68]
    assert model.match_anchors(anchors, gt)[0][p] == 0
    assert Detectron2FCOS.match_anchors(model, anchors, gt)[0][p] == -1
    # 2. radius 0: every point inside the box (in range) is positive; detectron2's has no positive
    model0 = _model(radius=0.0)
    gt = [_inst([[10, 10, 50, 40]], [1])]
    ours = model0.match_anchors(anchors, gt)[0]
    centers = Boxes.cat(anchors).get_centers()[
        : 32 * 32
    ]  # p3: max(l, t, r, b) < 40 <= 64 everywhere inside
    inside = (
        (centers[:, 0] > 10) & (centers[:, 0] < 50) & (centers[:, 1] > 10) & (centers[:, 1] < 40)
    )
    assert torch.equal(ours[: 32 * 32] == 0, inside) and inside.sum() == 20
    assert (Detectron2FCOS.match_anchors(model0, anchors, gt)[0] == -1).all()
    # 3. an image without boxes: all background here, detectron2's cannot reduce over zero boxes
    empty = [_inst([], [])]
    assert (model.match_anchors(anchors, empty)[0] == -1).all()
    with pytest.raises((IndexError, RuntimeError)):
        Detectron2FCOS.match_anchors(model, anchors, empty)
    with pytest.raises((IndexError, RuntimeError)):
        Detectron2FCOS.label_anchors(model, anchors, empty)


def test_labels_ltrb_and_centerness_targets_from_detectron2_equal_the_fcos_rule():
    model = _model()
    anchors = _anchors(model)
    g = torch.Generator().manual_seed(5)
    gt = [_random_gt(g, 5)]
    idx = model.match_anchors(anchors, gt)[0]
    labels, matched = model.label_anchors(anchors, gt)
    ltrb = model.box2box_transform.get_deltas(Boxes.cat(anchors).tensor, matched[0].tensor)
    ctr = model.compute_ctrness_targets(anchors, matched)[0]
    points = Boxes.cat(anchors).get_centers().tolist()
    boxes, classes = gt[0].gt_boxes.tensor.tolist(), gt[0].gt_classes.tolist()
    n_pos = 0
    for r, i in enumerate(idx.tolist()):
        if i < 0:
            assert labels[0][r] == C
            continue
        n_pos += 1
        (x, y), (x0, y0, x1, y1) = points[r], boxes[i]
        l, t, rr, b = x - x0, y - y0, x1 - x, y1 - y
        assert labels[0][r] == classes[i]
        assert ltrb[r].tolist() == pytest.approx([l, t, rr, b], rel=1e-6)
        assert ctr[r].item() == pytest.approx(
            math.sqrt(min(l, rr) / max(l, rr) * min(t, b) / max(t, b)), rel=1e-5
        )
    assert n_pos > 10


def _training_inputs(model, seed):
    anchors = _anchors(model)
    g = torch.Generator().manual_seed(seed)
    gt = [_random_gt(g, 4), _random_gt(g, 2)]
    labels, matched = model.label_anchors(anchors, gt)
    R = sum(len(a) for a in anchors)
    n = [len(a) for a in anchors]
    logits = list((torch.randn(2, R, C, generator=g) * 3).split(n, dim=1))
    deltas = list((torch.rand(2, R, 4, generator=g) * 60 + 1).split(n, dim=1))
    ctrs = list(torch.randn(2, R, 1, generator=g).split(n, dim=1))
    return anchors, logits, labels, deltas, matched, ctrs, [x.gt_classes for x in gt]


@pytest.mark.parametrize("seed", range(3))
def test_losses_against_detectron2s(seed):
    """Same sums (focal, GIoU, centerness BCE) as detectron2's FCOS.losses; ours divides by num_pos where
    detectron2 divides by an EMA of it, and weights the GIoU by the centerness targets."""
    model = _model()
    anchors, logits, labels, deltas, matched, ctrs, gt_classes = _training_inputs(model, seed)
    with EventStorage(0):
        ours = model.losses(anchors, logits, labels, deltas, matched, ctrs, gt_classes)
        theirs = Detectron2FCOS.losses(model, anchors, logits, labels, deltas, matched, ctrs)
    ema = model.loss_normalizer  # detectron2's EMA: 0.9 * 300 + 0.1 * num_pos
    pos = torch.stack(labels) < C
    num_pos = pos.sum().item()
    assert num_pos > 10 and ema == pytest.approx(0.9 * 300 + 0.1 * num_pos)
    torch.testing.assert_close(ours["loss_fcos_cls"] * num_pos, theirs["loss_fcos_cls"] * ema)
    torch.testing.assert_close(ours["loss_fcos_ctr"] * num_pos, theirs["loss_fcos_ctr"] * ema)
    # box: independent GIoU of the decoded boxes (absolute coordinates) and centerness from the ltrb targets
    pts = Boxes.cat(anchors).get_centers()[None].expand(2, -1, -1)[pos]
    d = torch.cat(deltas, dim=1)[pos]
    pred = torch.cat([pts - d[:, :2], pts + d[:, 2:]], dim=1)
    tgt = torch.stack([m.tensor for m in matched])[pos]
    t = torch.cat([pts - tgt[:, :2], tgt[:, 2:] - pts], dim=1)
    w = torch.sqrt(
        t[:, [0, 2]].min(1).values
        / t[:, [0, 2]].max(1).values
        * t[:, [1, 3]].min(1).values
        / t[:, [1, 3]].max(1).values
    )
    per_loc = giou_loss(pred, tgt, reduction="none")
    torch.testing.assert_close(theirs["loss_fcos_loc"] * ema, per_loc.sum(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(
        ours["loss_fcos_loc"], (per_loc * w).sum() / w.sum(), rtol=1e-5, atol=1e-6
    )
    # and the focal sum is fvcore's sigmoid focal loss of the one-hot targets (background column dropped)
    onehot = F.one_hot(torch.stack(labels), C + 1)[..., :C].float()
    focal = sigmoid_focal_loss(
        torch.cat(logits, dim=1), onehot, alpha=0.25, gamma=2.0, reduction="sum"
    )
    torch.testing.assert_close(ours["loss_fcos_cls"] * num_pos, focal)


def _inference_inputs(model, seed, hw=(64, 96)):
    anchors = _anchors(model, hw)
    g = torch.Generator().manual_seed(seed)
    n = [len(a) for a in anchors]
    logits = [torch.randn(k, C, generator=g) * 2 - 2 for k in n]
    deltas = [torch.rand(k, 4, generator=g) * 12 + 1 for k in n]
    ctrs = [torch.randn(k, 1, generator=g) for k in n]
    return anchors, logits, deltas, ctrs, hw


def _reference_inference(anchors, logits, deltas, ctrs, hw, thresh, topk, nms, max_det):
    """Independent transcription of the FCOS reference post-processing (plain torch)."""
    boxes, scores, classes = [], [], []
    for a, lg, d, ct in zip(anchors, logits, deltas, ctrs):
        prob = lg.sigmoid()
        keep = prob > thresh
        s = torch.sqrt(prob * ct.sigmoid())[keep]
        loc_cls = keep.nonzero()
        s, order = s.sort(descending=True)
        s, loc_cls = s[:topk], loc_cls[order[:topk]]
        pts = a.get_centers()[loc_cls[:, 0]]
        dd = d[loc_cls[:, 0]]
        boxes.append(torch.cat([pts - dd[:, :2], pts + dd[:, 2:]], dim=1))
        scores.append(s)
        classes.append(loc_cls[:, 1])
    boxes, scores, classes = torch.cat(boxes), torch.cat(scores), torch.cat(classes)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, hw[1])
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, hw[0])
    keep = batched_nms(boxes, scores, classes, nms)[:max_det]
    return boxes[keep], scores[keep], classes[keep]


@pytest.mark.parametrize("thresh,topk", [(0.05, 1000), (0.2, 7), (0.0, 30)])
def test_inference_is_the_reference_rule(thresh, topk):
    model = _model()
    model.test_score_thresh, model.test_topk_candidates = thresh, topk
    anchors, logits, deltas, ctrs, hw = _inference_inputs(model, 3)
    out = model.inference_single_image(anchors, logits, deltas, ctrs, hw)
    boxes, scores, classes = _reference_inference(
        anchors,
        logits,
        deltas,
        ctrs,
        hw,
        thresh,
        topk,
        model.test_nms_thresh,
        model.max_detections_per_image,
    )
    assert len(out) == len(scores) > 5
    torch.testing.assert_close(out.pred_boxes.tensor, boxes)
    torch.testing.assert_close(out.scores, scores)
    assert torch.equal(out.pred_classes, classes)


def test_inference_equals_detectron2s_without_threshold_and_clipping_and_differs_otherwise():
    model = _model()
    model.test_score_thresh = 0.0
    anchors, logits, deltas, ctrs, hw = _inference_inputs(model, 4, hw=(256, 256))
    deltas = [
        d.clamp(max=3.0) for d in deltas
    ]  # every box inside the image: clipping changes nothing
    scores = [torch.sqrt(lg.sigmoid() * ct.sigmoid()) for lg, ct in zip(logits, ctrs)]
    ours = model.inference_single_image(anchors, logits, deltas, ctrs, hw)
    theirs = Detectron2FCOS.inference_single_image(model, anchors, scores, deltas, hw)
    assert len(ours) == len(theirs) > 5
    for k in ("pred_boxes", "scores", "pred_classes"):
        a, b = ours.get(k), theirs.get(k)
        assert torch.equal(getattr(a, "tensor", a), getattr(b, "tensor", b))
    # threshold 0.05 on the probability: a location of probability 0.04 and centerness ~1 (score 0.2) is
    # dropped here and kept by detectron2's (which thresholds the score)
    model.test_score_thresh = 0.05
    logits = [torch.full_like(lg, -10.0) for lg in logits]
    logits[0][0, 2] = math.log(0.04 / 0.96)
    ctrs = [torch.full_like(ct, 10.0) for ct in ctrs]
    scores = [torch.sqrt(lg.sigmoid() * ct.sigmoid()) for lg, ct in zip(logits, ctrs)]
    assert len(model.inference_single_image(anchors, logits, deltas, ctrs, hw)) == 0
    assert Detectron2FCOS.inference_single_image(
        model, anchors, scores, deltas, hw
    ).pred_classes.tolist() == [2]
