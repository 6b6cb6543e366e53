"""FCOS targets and CenterNet heat maps on hand-made boxes, checked against hand values and an
independent brute-force (loop) implementation; CenterNet peak extraction on a synthetic heat map."""

import math

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

from lt_detectron.modeling.dense.centernet import (
    centernet_decode,
    centernet_targets,
    gaussian_radius,
)
from lt_detectron.modeling.dense.fcos import FCOS
from lt_detectron.utils.testing import tiny_dense_cfg


def _inst(boxes, classes, hw=(64, 64)):
    inst = Instances(hw)
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.gt_classes = torch.tensor(classes, dtype=torch.long)
    return inst


def _fcos(in_features=("p3", "p4", "p5"), sizes=(16, 32), radius=1.5):
    cfg = tiny_dense_cfg("FCOS", "focal")
    cfg.MODEL.FCOS.IN_FEATURES = list(in_features)
    cfg.MODEL.FCOS.SIZES_OF_INTEREST = list(sizes)
    cfg.MODEL.FCOS.CENTER_SAMPLING_RADIUS = radius
    model = build_model(cfg)
    assert isinstance(model, FCOS)
    return model


def _anchors(model, hw=(64, 64)):
    return model.anchor_generator(
        [torch.zeros(1, 1, hw[0] // s, hw[1] // s) for s in model.strides]
    )


def _targets(model, boxes, classes, hw=(64, 64)):
    """Points per level, (R,) labels and (R, 4) ltrb targets of one image (FCOS.label_anchors)."""
    anchors = _anchors(model, hw)
    labels, matched = model.label_anchors(anchors, [_inst(boxes, classes, hw)])
    reg = model.box2box_transform.get_deltas(Boxes.cat(anchors).tensor, matched[0].tensor)
    return [a.get_centers() for a in anchors], labels[0], reg


def _brute_force(locs, strides, ranges, boxes, classes, radius, C):
    """Independent per-location loop (plain floats) of the FCOS assignment rule."""
    out = []
    for pts, s, (lo, hi) in zip(locs, strides, ranges):
        for x, y in pts.tolist():
            best, best_area = (C, None), float("inf")
            for (x0, y0, x1, y1), c in zip(boxes, classes):
                l, t, r, b = x - x0, y - y0, x1 - x, y1 - y
                if radius > 0:
                    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
                    inside = (max(cx - radius * s, x0) < x < min(cx + radius * s, x1)) and (
                        max(cy - radius * s, y0) < y < min(cy + radius * s, y1)
                    )
                else:
                    inside = min(l, t, r, b) > 0
                m = max(l, t, r, b)
                area = (x1 - x0) * (y1 - y0)
                if inside and lo <= m <= hi and area < best_area:
                    best, best_area = (c, (l, t, r, b)), area
            out.append(best)
    return out


def test_fcos_locations():
    model = _fcos()
    anchors = model.anchor_generator([torch.zeros(1, 1, h, w) for h, w in ((2, 3), (1, 2), (1, 1))])
    assert anchors[0].get_centers().tolist() == [
        [4, 4],
        [12, 4],
        [20, 4],
        [4, 12],
        [12, 12],
        [20, 12],
    ]
    assert anchors[1].get_centers().tolist() == [[8, 8], [24, 8]]
    assert anchors[0].tensor[0].tolist() == [0, 0, 8, 8]  # stride-sized: width = the stride
    assert anchors[2].tensor[0].tolist() == [0, 0, 32, 32]


def test_fcos_size_range_assignment_per_level():
    model = _fcos()
    assert model.size_ranges == [(0.0, 16.0), (16.0, 32.0), (32.0, 1e8)]
    boxes = [[0, 0, 24, 24], [8, 8, 56, 56]]
    locs, labels, reg = _targets(model, boxes, [1, 2])
    p3, p4 = 0, 64  # offsets of the levels (8x8, 4x4, 2x2 locations)
    # small box: on p3 only the location (12, 12) has max(l,t,r,b) = 12 <= 16; (4, 4) has 20 -> not p3
    assert labels[p3 + 1 * 8 + 1] == 1 and reg[p3 + 9].tolist() == [12, 12, 12, 12]
    assert labels[p3 + 0] == 5
    # ... and on p4 the location (8, 8) (max 16 in [16, 32])
    assert labels[p4 + 0] == 1 and reg[p4 + 0].tolist() == [8, 8, 16, 16]
    # big box (48 x 48): none on p3 (max >= 28 > 16); on p5 the 4 locations (16|48, 16|48): max 40 >= 32
    assert not (labels[:64] == 2).any()
    assert (labels[80:] == 2).all()
    ref = _brute_force(locs, model.strides, model.size_ranges, boxes, [1, 2], 1.5, 5)
    assert labels.tolist() == [c for c, _ in ref]
    for i, (c, ltrb) in enumerate(ref):
        if c != 5:
            assert reg[i].tolist() == pytest.approx(list(ltrb))


def test_fcos_center_sampling_membership():
    # one level, unlimited range: membership is the centre region only
    model = _fcos(in_features=("p3",), sizes=(), radius=1.5)
    box = [[0, 0, 64, 16]]  # centre (32, 8): region x in (20, 44), y in (0, 16)
    locs, labels, _ = _targets(model, box, [0])
    pos = {tuple(p) for p, l in zip(locs[0].tolist(), labels.tolist()) if l == 0}
    assert pos == {(28, 4), (36, 4), (28, 12), (36, 12)}
    # without center sampling every location strictly inside the box is positive
    model0 = _fcos(in_features=("p3",), sizes=(), radius=0.0)
    locs, labels, _ = _targets(model0, box, [0])
    pos0 = {tuple(p) for p, l in zip(locs[0].tolist(), labels.tolist()) if l == 0}
    assert pos0 == {(x, y) for x in range(4, 64, 8) for y in (4, 12)}
    # multi-level, several boxes: vectorised targets == brute-force loop
    boxes = [[3, 5, 41, 37], [30, 2, 62, 60], [10, 40, 22, 58]]
    model = _fcos()
    locs, labels, reg = _targets(model, boxes, [0, 3, 4])
    ref = _brute_force(locs, model.strides, model.size_ranges, boxes, [0, 3, 4], 1.5, 5)
    assert labels.tolist() == [c for c, _ in ref]
    assert sum(c != 5 for c, _ in ref) > 3


def test_fcos_ambiguous_location_takes_smallest_box():
    model = _fcos(in_features=("p3",), sizes=(), radius=0.0)
    locs, labels, reg = _targets(model, [[0, 0, 64, 64], [0, 0, 32, 32]], [4, 3])
    idx = {tuple(p): i for i, p in enumerate(locs[0].tolist())}
    assert labels[idx[(12, 12)]] == 3 and reg[idx[(12, 12)]].tolist() == [12, 12, 20, 20]
    assert labels[idx[(44, 44)]] == 4 and reg[idx[(44, 44)]].tolist() == [44, 44, 20, 20]
    # same with the boxes in the other order
    locs, labels, _ = _targets(model, [[0, 0, 32, 32], [0, 0, 64, 64]], [3, 4])
    assert labels[idx[(12, 12)]] == 3


def test_fcos_centerness_values():
    """FCOS.compute_ctrness_targets (detectron2's) of boxes at ltrb distances from points (x, y)."""
    model = _fcos()
    reg = [
        [12.0, 12.0, 20.0, 20.0],
        [5.0, 1.0, 5.0, 3.0],
        [2.0, 8.0, 6.0, 8.0],
        [4.0, 4.0, 4.0, 4.0],
    ]
    pts = [[20.0, 28.0], [4.0, 4.0], [100.0, 12.0], [36.0, 36.0]]
    anchors = [Boxes(torch.tensor([[x - 4, y - 4, x + 4, y + 4] for x, y in pts]))]
    gt = [
        Boxes(
            torch.tensor([[x - l, y - t, x + r, y + b] for (x, y), (l, t, r, b) in zip(pts, reg)])
        )
    ]
    expect = [math.sqrt((min(l, r) / max(l, r)) * (min(t, b) / max(t, b))) for l, t, r, b in reg]
    assert expect[0] == pytest.approx(0.6) and expect[3] == 1.0
    assert model.compute_ctrness_targets(anchors, gt)[0].tolist() == pytest.approx(expect)


def test_fcos_bad_box_loss_names_the_key():
    cfg = tiny_dense_cfg("FCOS", "focal")
    cfg.MODEL.FCOS.BOX_LOSS = "l1"
    with pytest.raises(ValueError, match="MODEL.FCOS.BOX_LOSS must be giou or iou"):
        build_model(cfg)


def test_fcos_no_boxes_is_all_background():
    model = _fcos()
    _, labels, reg = _targets(model, [], [])
    assert (labels == 5).all() and reg.shape == (64 + 16 + 4, 4)
    # mixed batch: the image with boxes is labelled as alone
    anchors = _anchors(model)
    one = [_inst([[3, 5, 41, 37]], [2])]
    labels, _ = model.label_anchors(anchors, [_inst([], []), one[0], _inst([], [])])
    assert torch.equal(labels[1], model.label_anchors(anchors, one)[0][0])
    assert (labels[0] == 5).all() and (labels[2] == 5).all() and (labels[1] == 2).any()


# ------------------------------------------------------------------ CenterNet
def test_gaussian_radius_hand_values():
    # h=8, w=10, overlap 0.7: r3 = (-25.2 + sqrt(25.2^2 + 4 * 2.8 * 24)) / 2 = 2.4320 is the smallest
    assert gaussian_radius((8, 10), 0.7) == pytest.approx(
        (-25.2 + math.sqrt(25.2**2 + 4 * 2.8 * 24)) / 2
    )
    assert gaussian_radius((8, 10), 0.7) == pytest.approx(2.432, abs=1e-3)
    # h=w=10: r3 = (-28 + sqrt(28^2 + 4 * 2.8 * 30)) / 2 = 2.7332
    assert gaussian_radius((10, 10), 0.7) == pytest.approx(2.7332, abs=1e-4)


def test_centernet_heatmap_single_box():
    # input box [8, 8, 48, 40] at stride 4 -> [2, 2, 12, 10]: w 10, h 8, centre (7, 6), radius int(2.43) = 2
    heat, b, ys, xs, wh, off = centernet_targets([_inst([[8, 8, 48, 40]], [2])], 5, (16, 16), 4)
    assert heat.shape == (1, 5, 16, 16)
    assert heat[0, 2, 6, 7] == 1.0 and heat.eq(1).sum() == 1
    assert heat[0, [0, 1, 3, 4]].abs().sum() == 0
    sigma = (2 * 2 + 1) / 6
    for dy in range(-3, 4):
        for dx in range(-3, 4):
            v = heat[0, 2, 6 + dy, 7 + dx].item()
            if max(abs(dx), abs(dy)) <= 2:
                assert v == pytest.approx(
                    math.exp(-(dx * dx + dy * dy) / (2 * sigma * sigma)), rel=1e-5
                )
            else:
                assert v == 0.0
    assert (b.tolist(), ys.tolist(), xs.tolist()) == ([0], [6], [7])
    assert wh.tolist() == [[10.0, 8.0]] and off.tolist() == [[0.0, 0.0]]


def test_centernet_offset_and_size_targets():
    # [10, 6, 50, 41] / 4 = [2.5, 1.5, 12.5, 10.25]: centre (7.5, 5.875) -> (7, 5), offset (0.5, 0.875)
    heat, b, ys, xs, wh, off = centernet_targets([_inst([[10, 6, 50, 41]], [0])], 3, (16, 16), 4)
    assert heat[0, 0, 5, 7] == 1.0
    assert (ys.tolist(), xs.tolist()) == ([5], [7])
    assert wh.tolist()[0] == pytest.approx([10.0, 8.75])
    assert off.tolist()[0] == pytest.approx([0.5, 0.875])


def test_centernet_overlapping_objects_take_max():
    a, bb = [8, 8, 48, 40], [20, 12, 60, 52]
    ha = centernet_targets([_inst([a], [1])], 2, (16, 16), 4)[0]
    hb = centernet_targets([_inst([bb], [1])], 2, (16, 16), 4)[0]
    hab = centernet_targets([_inst([a, bb], [1, 1])], 2, (16, 16), 4)[0]
    assert torch.equal(hab, torch.maximum(ha, hb))
    assert ((ha > 0) & (hb > 0)).any()  # they do overlap
    assert hab.eq(1).sum() == 2
    # different classes go to different channels
    hc = centernet_targets([_inst([a, bb], [0, 1])], 2, (16, 16), 4)[0]
    assert torch.equal(hc[0, 0], ha[0, 1]) and torch.equal(hc[0, 1], hb[0, 1])


def test_centernet_peak_extraction():
    C, H, W, s = 3, 16, 16, 4
    logits = torch.full((C, H, W), -10.0)
    logits[1, 4, 5] = 3.0  # peak
    logits[1, 4, 6] = 2.0  # neighbour of a higher peak: suppressed by the 3x3 max-pool
    logits[2, 10, 12] = 1.0  # second peak, other class
    logits[0, 4, 5] = 0.5  # same pixel, other class: kept (max-pool is per channel)
    wh = torch.zeros(2, H, W)
    off = torch.zeros(2, H, W)
    wh[:, 4, 5] = torch.tensor([4.0, 6.0])
    off[:, 4, 5] = torch.tensor([0.25, 0.5])
    wh[:, 10, 12] = torch.tensor([2.0, 2.0])
    inst = centernet_decode(
        logits, wh, off, s, k=10, kernel=3, score_thresh=0.1, image_size=(64, 64)
    )
    assert inst.pred_classes.tolist() == [1, 2, 0]  # sorted by score
    assert inst.scores.tolist() == pytest.approx(
        torch.sigmoid(torch.tensor([3.0, 1.0, 0.5])).tolist()
    )
    cx, cy = 5.25, 4.5
    assert inst.pred_boxes.tensor[0].tolist() == pytest.approx(
        [(cx - 2) * s, (cy - 3) * s, (cx + 2) * s, (cy + 3) * s]
    )
    assert inst.pred_boxes.tensor[1].tolist() == pytest.approx([11 * s, 9 * s, 13 * s, 11 * s])
    assert inst.pred_boxes.tensor[2].tolist() == inst.pred_boxes.tensor[0].tolist()  # same pixel
    # k limits the number of peaks
    assert len(centernet_decode(logits, wh, off, s, k=1, score_thresh=0.1)) == 1
