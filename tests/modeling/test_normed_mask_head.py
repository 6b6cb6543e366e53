"""The normalised mask head (issue 25 §3): ``NormedConv2d`` against mmdetection's definition re-derived
naively, its ``forward_classes``, the head in Detectron2's Mask R-CNN, and the LVIS configs that use it.

mmdetection's ``NormedConv2d`` (mmdet/models/layers/normed_predictor.py), re-derived: at each pixel
``x_hat = tau * x / (||x||_2^p + eps)`` with the norm over the input channels; each output channel's
weights ``W_k / (||W_k||_2^p + eps)`` with the norm over the input channels (dim 1 of the 4-d weight,
or over Cin*k*k with ``norm_over_kernel``); then the convolution plus the (un-normalised) bias.
Defaults there: temperature 20, power 1, eps 1e-6, norm_over_kernel False, bias on.
"""

import os

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.roi_heads.mask_head import ROI_MASK_HEAD_REGISTRY
from detectron2.structures import Boxes, Instances, PolygonMasks

from lt_detectron.config import LTConfigError, validate_lt_config
from lt_detectron.modeling import NormedConv2d, NormedMaskRCNNConvUpsampleHead
from lt_detectron.utils.testing import lt_cfg

from tests._data import ROOT


def naive_normed_conv(x, weight, bias, tau, p, eps, over_kernel=False):
    """Pixel by pixel and kernel tap by kernel tap, with sqrt(sum of squares) norms (float64)."""
    N, Cin, H, W = x.shape
    Cout, _, k, _ = weight.shape
    xn = torch.sqrt((x * x).sum(1, keepdim=True))
    xh = tau * x / (xn**p + eps)
    if over_kernel:
        wn = torch.sqrt((weight * weight).sum((1, 2, 3), keepdim=True))
    else:
        wn = torch.sqrt((weight * weight).sum(1, keepdim=True))
    wh = weight / (wn**p + eps)
    Ho, Wo = H - k + 1, W - k + 1
    out = []
    for i in range(Ho):
        row = []
        for j in range(Wo):
            patch = xh[:, :, i : i + k, j : j + k]  # (N, Cin, k, k)
            v = (patch[:, None] * wh[None]).sum((2, 3, 4))  # (N, Cout)
            row.append(v + (bias if bias is not None else 0))
        out.append(torch.stack(row, -1))
    return torch.stack(out, -2)


@pytest.mark.parametrize(
    "tau,p,k,over_kernel,use_bias",
    [(20.0, 1.0, 1, False, True), (7.5, 2.0, 1, False, False), (20.0, 1.0, 3, False, True)]
    + [(3.0, 1.5, 3, True, True)],
)
def test_normed_conv2d_equals_mmdetection_formula(tau, p, k, over_kernel, use_bias):
    torch.manual_seed(0)
    m = NormedConv2d(
        6, 5, k, bias=use_bias, temperature=tau, power=p, norm_over_kernel=over_kernel
    ).double()
    if use_bias:
        with torch.no_grad():
            m.bias.normal_()
    x = torch.randn(3, 6, 7, 5, dtype=torch.float64, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    w2 = m.weight.detach().clone().requires_grad_(True)
    b2 = m.bias.detach().clone().requires_grad_(True) if use_bias else None
    out = m(x)
    ref = naive_normed_conv(x2, w2, b2, tau, p, 1e-6, over_kernel)
    assert out.shape == ref.shape == (3, 5, 7 - k + 1, 5 - k + 1)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(out)
    (out * g).sum().backward()
    (ref * g).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(m.weight.grad, w2.grad, rtol=1e-9, atol=1e-10)
    if use_bias:
        torch.testing.assert_close(m.bias.grad, b2.grad, rtol=1e-9, atol=1e-10)
    # the output is invariant to the scale of the input and of the weights (cosine for p = 1)
    if p == 1.0:
        with torch.no_grad():
            m.weight.mul_(1e3)
            scaled = m(x.detach() * 50)
        torch.testing.assert_close(scaled, out.detach(), rtol=1e-4, atol=1e-4)  # eps aside


def test_normed_conv2d_zero_pixel_gives_bias_and_finite_gradients():
    """After the deconv's ReLU a pixel can be all zero: its logits are the bias, the gradients are
    finite, and nothing flows back through the ReLU from that pixel."""
    m = NormedConv2d(4, 3)
    with torch.no_grad():
        m.bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
    pre = torch.randn(2, 4, 3, 3)
    pre[:, :, 1, 1] = -1.0
    pre.requires_grad_(True)
    out = m(pre.relu())
    torch.testing.assert_close(out[:, :, 1, 1], m.bias.detach().expand(2, 3))
    out.sum().backward()
    assert torch.isfinite(pre.grad).all() and torch.isfinite(m.weight.grad).all()
    assert (pre.grad[:, :, 1, 1] == 0).all()


def test_normed_conv2d_bad_temperature():
    with pytest.raises(ValueError, match="temperature"):
        NormedConv2d(4, 3, temperature=0)


@pytest.mark.parametrize("n", [0, 1, 7])
def test_forward_classes_equals_gathered_forward(n):
    torch.manual_seed(n)
    m = NormedConv2d(8, 11, temperature=20.0)
    with torch.no_grad():
        m.bias.normal_()
    x = torch.randn(n, 8, 6, 6)
    classes = torch.randint(0, 11, (n,))
    if n > 2:
        classes[1] = classes[2] = 4  # repeated classes
    full = m(x)
    expect = full[torch.arange(n), classes][:, None]
    got = m.forward_classes(x, classes)
    assert got.shape == (n, 1, 6, 6)
    torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-5)
    if n:
        # the same gradients as the gathered full forward
        g = torch.randn_like(got)
        wg = torch.autograd.grad((got * g).sum(), m.weight)[0]
        wg_ref = torch.autograd.grad((m(x)[torch.arange(n), classes][:, None] * g).sum(), m.weight)[
            0
        ]
        torch.testing.assert_close(wg, wg_ref, rtol=1e-5, atol=1e-6)


def test_forward_classes_rejects_wrong_shape():
    m = NormedConv2d(4, 3)
    with pytest.raises(ValueError, match="classes must have shape"):
        m.forward_classes(torch.randn(2, 4, 3, 3), torch.tensor([0]))


def _head_cfg(*opts):
    return lt_cfg(
        None,
        "MODEL.MASK_ON",
        "True",
        "MODEL.ROI_MASK_HEAD.NAME",
        "NormedMaskRCNNConvUpsampleHead",
        "MODEL.ROI_MASK_HEAD.CONV_DIM",
        "8",
        "MODEL.ROI_MASK_HEAD.NUM_CONV",
        "2",
        "MODEL.ROI_HEADS.NUM_CLASSES",
        "5",
        *opts,
    )


def _proposals(n_img=2, per_img=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_img):
        inst = Instances((64, 64))
        xy = torch.rand(per_img, 2, generator=g) * 30
        wh = 10 + torch.rand(per_img, 2, generator=g) * 20
        boxes = torch.cat([xy, xy + wh], 1)
        inst.proposal_boxes = Boxes(boxes)
        inst.gt_classes = torch.randint(0, 5, (per_img,), generator=g)
        polys = []
        for b in boxes.tolist():  # a triangle in the lower-left half of each box
            x0, y0, x1, y1 = b
            polys.append([[x0, y0, x0, y1, x1, y1]])
        inst.gt_masks = PolygonMasks(polys)
        out.append(inst)
    return out


def test_normed_mask_head_from_config_and_checkpoint_names():
    cfg = _head_cfg("MODEL.LT.NORMED_MASK.TEMPERATURE", "12.5", "MODEL.LT.NORMED_MASK.POWER", "2.0")
    head = ROI_MASK_HEAD_REGISTRY.get(cfg.MODEL.ROI_MASK_HEAD.NAME)(
        cfg, ShapeSpec(channels=16, width=14, height=14)
    )
    assert isinstance(head, NormedMaskRCNNConvUpsampleHead)
    assert isinstance(head.predictor, NormedConv2d)
    assert (head.predictor.temperature, head.predictor.power) == (12.5, 2.0)
    assert head.predictor.weight.shape == (5, 8, 1, 1)
    # the predictor runs last, and the parameter names are those of Detectron2's plain head
    assert list(head.children())[-1] is head.predictor
    plain = ROI_MASK_HEAD_REGISTRY.get("MaskRCNNConvUpsampleHead")(
        cfg, ShapeSpec(channels=16, width=14, height=14)
    )
    assert {k: v.shape for k, v in head.state_dict().items()} == {
        k: v.shape for k, v in plain.state_dict().items()
    }


def test_normed_mask_head_config_values_are_checked():
    cfg = _head_cfg("MODEL.LT.NORMED_MASK.TEMPERATURE", "0.0")
    with pytest.raises(LTConfigError, match="MODEL.LT.NORMED_MASK.TEMPERATURE"):
        validate_lt_config(cfg, "my.yaml")


def test_normed_mask_head_loss_backward_and_trains():
    """Training forward = Detectron2's mask loss on the NormedConv2d logits; SGD lowers it."""
    from detectron2.modeling.roi_heads.mask_head import mask_rcnn_loss
    from detectron2.utils.events import EventStorage

    torch.manual_seed(0)
    cfg = _head_cfg()
    head = ROI_MASK_HEAD_REGISTRY.get(cfg.MODEL.ROI_MASK_HEAD.NAME)(
        cfg, ShapeSpec(channels=16, width=14, height=14)
    )
    head.train()
    x = torch.randn(8, 16, 14, 14)
    proposals = _proposals()
    opt = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9)
    losses = []
    with EventStorage():
        # the loss is Detectron2's mask_rcnn_loss of the normalised logits
        feats = x
        for name, layer in head.named_children():
            if name != "predictor":
                feats = layer(feats)
        logits = naive_normed_conv(
            feats.double(),
            head.predictor.weight.double(),
            head.predictor.bias.double(),
            20.0,
            1.0,
            1e-6,
        )
        expect = mask_rcnn_loss(logits.float(), proposals)
        got = head(x, proposals)["loss_mask"]
        torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-6)
        for _ in range(15):
            loss = head(x, proposals)["loss_mask"]
            opt.zero_grad()
            loss.backward()
            assert head.predictor.weight.grad.abs().sum() > 0
            opt.step()
            losses.append(float(loss))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.8 * losses[0], losses


def test_normed_mask_head_inference_uses_predicted_class_channel():
    cfg = _head_cfg()
    head = ROI_MASK_HEAD_REGISTRY.get(cfg.MODEL.ROI_MASK_HEAD.NAME)(
        cfg, ShapeSpec(channels=16, width=14, height=14)
    )
    head.eval()
    x = torch.randn(3, 16, 14, 14)
    inst = Instances((64, 64))
    inst.pred_boxes = Boxes(torch.tensor([[0.0, 0, 10, 10], [5, 5, 30, 30], [1, 2, 3, 4]]))
    inst.pred_classes = torch.tensor([4, 0, 4])
    with torch.no_grad():
        out = head(x, [inst])[0].pred_masks
        feats = x
        for name, layer in head.named_children():
            if name != "predictor":
                feats = layer(feats)
        expect = head.predictor.forward_classes(feats, inst.pred_classes).sigmoid()
    torch.testing.assert_close(out, expect, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "name",
    ["ecm_mask_rcnn_R_50_FPN_1x.yaml", "seesaw_normed_mask_rcnn_R_50_FPN_2x.yaml"],
)
def test_shipped_lvis_config_with_normed_mask_head_builds(name):
    cfg = lt_cfg(os.path.join(ROOT, "configs", "lvis_v1", name), "MODEL.DEVICE", "cpu")
    assert cfg.MODEL.ROI_MASK_HEAD.NAME == "NormedMaskRCNNConvUpsampleHead"
    model = build_model(cfg)
    pred = model.roi_heads.mask_head.predictor
    assert isinstance(pred, NormedConv2d)
    assert pred.weight.shape == (1203, 256, 1, 1) and pred.temperature == 20.0


def test_normed_mask_head_trains_in_tiny_mask_rcnn():
    """The lt_shapes tiny Faster R-CNN with MASK_ON and the normed head: a few SGD iterations on two
    synthetic images give finite losses, and the predictor's weights move."""
    from detectron2.utils.events import EventStorage

    torch.manual_seed(0)
    cfg = lt_cfg(
        os.path.join(ROOT, "configs", "lt_shapes", "faster_rcnn_tiny_softmax.yaml"),
        "MODEL.MASK_ON",
        "True",
        "MODEL.ROI_MASK_HEAD.NAME",
        "NormedMaskRCNNConvUpsampleHead",
        "MODEL.ROI_MASK_HEAD.CONV_DIM",
        "16",
        "MODEL.ROI_MASK_HEAD.NUM_CONV",
        "1",
        "DATASETS.TRAIN",
        "()",
    )
    model = build_model(cfg)
    assert isinstance(model.roi_heads.mask_head.predictor, NormedConv2d)
    inputs = []
    for i in range(2):
        inst = Instances((128, 128))
        boxes = torch.tensor([[10.0, 12, 60, 70], [70, 30, 120, 100]]) + i
        inst.gt_boxes = Boxes(boxes)
        inst.gt_classes = torch.tensor([3, 17])
        inst.gt_masks = PolygonMasks(
            [[[b[0], b[1], b[0], b[3], b[2], b[3]]] for b in boxes.tolist()]
        )
        inputs.append({"image": torch.rand(3, 128, 128) * 255, "instances": inst})
    before = model.roi_heads.mask_head.predictor.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    with EventStorage():
        for _ in range(3):
            losses = model(inputs)
            assert "loss_mask" in losses
            total = sum(losses.values())
            assert torch.isfinite(total)
            opt.zero_grad()
            total.backward()
            opt.step()
    assert not torch.equal(before, model.roi_heads.mask_head.predictor.weight.detach())


@pytest.mark.parametrize("head,unused", [("MaskRCNNConvUpsampleHead", True), ("", False)])
def test_normed_mask_keys_unused_without_the_normed_head_are_named(head, unused):
    """MODEL.LT.NORMED_MASK.TEMPERATURE set but the plain mask head built: named as unused."""
    from lt_detectron.config_reads import record_reads, unused_lt_keys

    cfg = lt_cfg(
        os.path.join(ROOT, "configs", "lt_shapes", "mask_rcnn_tiny_ecm_normed_mask.yaml"),
        "MODEL.LT.NORMED_MASK.TEMPERATURE",
        "10.0",
        *(("MODEL.ROI_MASK_HEAD.NAME", head) if head else ()),
        "DATASETS.TRAIN",
        "()",
        "MODEL.LT.ROI_LOSS",
        "softmax",
    )
    recording, reads = record_reads(cfg)
    build_model(recording)
    keys = [k for k, _, _ in unused_lt_keys(cfg, reads)]
    assert ("MODEL.LT.NORMED_MASK.TEMPERATURE" in keys) == unused, keys
