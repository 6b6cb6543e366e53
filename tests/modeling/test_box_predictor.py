"""LongTailFastRCNNOutputLayers: the loss protocol (classifier, loss, predict_probs contract), BOFL ROI
weights, federated loss, errors."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

import lt_detectron  # noqa: F401
from lt_detectron.class_stats import ClassStats
from lt_detectron.losses import ROI_LOSS_REGISTRY, ROIBatch, build_roi_loss
from lt_detectron.modeling import LongTailFastRCNNOutputLayers
from lt_detectron.utils.testing import lt_cfg

COUNTS = [100, 10, 1]
C = len(COUNTS)
ROI_LOSSES = ROI_LOSS_REGISTRY.names()  # every registered method, at collection time
STATS = ClassStats(
    ("fake",),
    tuple("c%d" % i for i in range(C)),
    tuple(range(C)),
    COUNTS,
    [50, 8, 1],
    60,
    np.array(["f", "c", "r"]),
)


def roi_cfg(loss, *opts):
    return lt_cfg(None, "MODEL.LT.ROI_LOSS", loss, *opts)


def make(loss, *opts):
    torch.manual_seed(0)
    return LongTailFastRCNNOutputLayers(
        ShapeSpec(channels=8),
        box2box_transform=Box2BoxTransform((10.0, 10.0, 5.0, 5.0)),
        num_classes=C,
        cls_loss=build_roi_loss(roi_cfg(loss, *opts), C, STATS),
    )


def bofl_opts(**kw):
    b = dict(
        KAPPA=1.0,
        ETA=0.9,
        BATCH_COUNTS="batch",
        TOTAL_EPOCHS=2,
        DEFERRED_EPOCHS=0,
        ITERS_PER_EPOCH=10.0,
    )
    b.update(kw)
    out = ["MODEL.LT.BOFL.ENABLED", True]
    for k, v in b.items():
        out += ["MODEL.LT.BOFL." + k, v]
    return out


def proposals_for(gt_per_image, rois_per_image=4):
    out = []
    for gts in gt_per_image:
        p = Instances((32, 32))
        p.proposal_boxes = Boxes(torch.tensor([[0.0, 0.0, 10.0, 10.0]] * rois_per_image))
        p.gt_boxes = Boxes(torch.tensor([[1.0, 1.0, 9.0, 9.0]] * rois_per_image))
        labels = list(gts) + [C] * (rois_per_image - len(gts))
        p.gt_classes = torch.tensor(labels[:rois_per_image])
        out.append(p)
    return out


@pytest.mark.parametrize("loss", ROI_LOSSES)
def test_every_loss_trains_and_predicts_background_last(loss):
    m = make(loss)
    x = torch.randn(8, 8)
    props = proposals_for([[0, 1], [2]])
    scores, deltas = m(x)
    # the layer the loss asked for (its own logit count is checked in its test file)
    num_logits = m.cls_loss.classifier_spec().num_logits
    assert num_logits >= C + 1 and scores.shape == (8, num_logits)
    with EventStorage(0) as storage:
        losses = m.losses(
            (scores, deltas), props, gt_classes_per_image=[torch.tensor([0, 1]), torch.tensor([2])]
        )
        assert (
            "fast_rcnn/cls_accuracy" in storage.latest()
        )  # every loss logs the accuracy (BAGS included)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert m.cls_score.weight.grad is not None and torch.isfinite(m.cls_score.weight.grad).all()
    probs = m.predict_probs((scores.detach(), deltas.detach()), props)
    assert [p.shape for p in probs] == [(4, C + 1), (4, C + 1)]
    p = torch.cat(probs)
    assert (p >= 0).all() and (p <= 1).all()
    if loss in ("softmax", "c2am"):
        torch.testing.assert_close(p.sum(1), torch.ones(8))


def test_classifier_init_as_before():
    """The layer each loss asks for, with today's init: Detectron2's linear (normal 0.01, zero bias) for
    softmax, BAGS' normal 0.01 with zero bias, C2AM's bias-free raw cosine, ECM's cosine 20 with bias."""
    from lt_detectron.modeling.classifiers import CosineClassifier

    m = make("softmax")
    assert isinstance(m.cls_score, torch.nn.Linear) and torch.all(m.cls_score.bias == 0)
    assert abs(float(m.cls_score.weight.std()) - 0.01) < 0.004
    m = make("bags")
    assert isinstance(m.cls_score, torch.nn.Linear) and torch.all(m.cls_score.bias == 0)
    assert m.cls_score.out_features == m.cls_loss.layout.num_logits
    m = make("c2am")
    assert (
        isinstance(m.cls_score, CosineClassifier)
        and m.cls_score.scale is None
        and m.cls_score.bias is None
    )
    m = make("ecm", "MODEL.LT.CLASSIFIER", "cosine")
    assert isinstance(m.cls_score, CosineClassifier) and float(m.cls_score.scale) == 20.0
    assert m.cls_score.bias is not None
    torch.testing.assert_close(
        make("sigmoid").cls_score.bias, torch.full((C + 1,), -math.log(99.0))
    )


def test_predict_probs_formulas():
    z = torch.randn(5, C + 1)
    props = proposals_for([[0]], rois_per_image=5)
    for loss in ("eqlv2", "ecm"):
        p = make(loss).predict_probs((z, None), props)[0]
        fg = torch.sigmoid(z[:, :C]) * (1 - torch.sigmoid(z[:, C:]))
        torch.testing.assert_close(p, torch.cat([fg, torch.sigmoid(z[:, C:])], 1))
    p = make("sigmoid").predict_probs((z, None), props)[0]
    torch.testing.assert_close(p[:, :C], torch.sigmoid(z[:, :C]))
    assert (p[:, C] == 0).all()
    m = make("c2am")
    p = m.predict_probs((z, None), props)[0]
    torch.testing.assert_close(p, F.softmax(30.0 * z, dim=1))


def test_eqlv2_default_prior_bias_and_unknown_loss():
    m = make("eqlv2")
    torch.testing.assert_close(m.cls_score.bias, torch.full((C + 1,), -math.log(999.0)))
    with pytest.raises(KeyError, match="unknown MODEL.LT.ROI_LOSS 'focal'; registered: bags, c2am"):
        make("focal")
    with pytest.raises(
        ValueError,
        match="MODEL.LT.BOFL.ENABLED is on, but MODEL.LT.ROI_LOSS softmax does not "
        "support it .losses that do: sigmoid",
    ):
        make("softmax", *bofl_opts())


def test_user_loss_instance_and_class_checks():
    from lt_detectron.losses import EQLv2Loss

    loss = EQLv2Loss(C)
    m = LongTailFastRCNNOutputLayers(
        ShapeSpec(channels=8),
        box2box_transform=Box2BoxTransform((1.0, 1.0, 1.0, 1.0)),
        num_classes=C,
        cls_loss=loss,
    )
    assert m.cls_loss is loss
    with pytest.raises(ValueError, match="cls_loss has 4 classes but the predictor has 3"):
        LongTailFastRCNNOutputLayers(
            ShapeSpec(channels=8),
            box2box_transform=Box2BoxTransform((1.0, 1.0, 1.0, 1.0)),
            num_classes=C,
            cls_loss=EQLv2Loss(4),
        )
    with pytest.raises(
        ValueError,
        match="MODEL.LT.ROI_LOSS ecm needs the training class statistics.*DATASETS.TRAIN",
    ):
        build_roi_loss(roi_cfg("ecm"), C, None)


def test_bofl_roi_weights_per_image_against_the_formula():
    m = make(
        "sigmoid",
        *bofl_opts(KAPPA=0.5, ETA=0.9, BATCH_COUNTS="image", TOTAL_EPOCHS=4, DEFERRED_EPOCHS=1),
    )
    # iteration 25 at 10 iterations per epoch -> epoch 2.5 -> e = 2 -> lambda = (2 - 1) / (4 - 1)
    gt_objects = [torch.tensor([0, 0, 1]), torch.tensor([2])]
    props = proposals_for([[0, 1], [2]], rois_per_image=3)
    z = torch.randn(6, C + 1, requires_grad=True)
    gt = torch.cat([p.gt_classes for p in props])
    with EventStorage(25) as storage:
        loss = m.cls_loss(z, gt, ROIBatch(rois_per_image=[3, 3], gt_classes_per_image=gt_objects))
        assert storage.latest()["bofl/lambda"][0] == pytest.approx(1 / 3)
        # the predictor passes the same batch
        m_loss = m.losses((z, torch.zeros(6, 4 * C)), props, gt_classes_per_image=gt_objects)[
            "loss_cls"
        ]
    torch.testing.assert_close(m_loss, loss)
    lam = 1 / 3
    n = sum(COUNTS)
    alpha = torch.tensor([n / (C * c) for c in COUNTS])
    a_hat = 1 + 0.5 * lam * (alpha - 1)
    eta_hat = 1 + lam * (0.9 - 1)
    w_img = [a_hat * eta_hat ** torch.bincount(g, minlength=C).double() for g in gt_objects]
    w = torch.stack([w_img[0]] * 3 + [w_img[1]] * 3)
    target = F.one_hot(gt, C + 1)[:, :C].double()
    ref = (
        w * F.binary_cross_entropy_with_logits(z[:, :C].double(), target, reduction="none")
    ).sum() / 6
    torch.testing.assert_close(loss.double(), ref, rtol=1e-6, atol=1e-6)


def test_bofl_roi_weights_are_one_while_deferred():
    m = make(
        "sigmoid",
        *bofl_opts(KAPPA=1.0, ETA=0.5, BATCH_COUNTS="batch", TOTAL_EPOCHS=4, DEFERRED_EPOCHS=2),
    )
    plain = make("sigmoid")
    z = torch.randn(4, C + 1)
    gt = proposals_for([[0, 2]])[0].gt_classes
    batch = ROIBatch(rois_per_image=[4], gt_classes_per_image=[torch.tensor([0, 2])])
    with EventStorage(29):  # epoch 2.9 -> e = 2 = deferred -> lambda 0
        assert torch.equal(m.cls_loss(z, gt, batch), plain.cls_loss(z, gt, batch))
    with EventStorage(30):  # epoch 3 -> lambda 1/2: weights differ
        assert not torch.equal(m.cls_loss(z, gt, batch), plain.cls_loss(z, gt, batch))


def test_bofl_needs_the_batch_gt_classes_and_the_epoch_length():
    m = make("sigmoid", *bofl_opts())
    props = proposals_for([[0]])
    with EventStorage(0), pytest.raises(ValueError, match="needs the GT classes of every image"):
        m.losses((torch.randn(4, C + 1), torch.zeros(4, 4 * C)), props)
    # no epoch length and no training data to derive it from: the error names the key
    with pytest.raises(ValueError, match="MODEL.LT.BOFL.ITERS_PER_EPOCH"):
        make("sigmoid", *bofl_opts(ITERS_PER_EPOCH=0.0))


def test_federated_loss_trains_only_the_subset_columns():
    loss = build_roi_loss(
        roi_cfg(
            "sigmoid",
            "MODEL.ROI_BOX_HEAD.USE_FED_LOSS",
            True,
            "MODEL.ROI_BOX_HEAD.FED_LOSS_NUM_CLASSES",
            2,
        ),
        C,
        STATS,
    )
    loss.fed_loss_weights.copy_(torch.tensor([0.0, 0.0, 1.0]))  # only class 2 can be sampled
    gt = proposals_for([[0]], rois_per_image=4)[0].gt_classes
    z = torch.randn(4, C + 1, requires_grad=True)
    loss(z, gt).backward()
    # GT class 0 and the only samplable class 2 are trained; class 1 (weight 0) is not
    assert (z.grad[:, 1] == 0).all() and (z.grad[:, 0] != 0).all() and (z.grad[:, 2] != 0).all()
    # the sampling weights come from the image counts: image_count ** FED_LOSS_FREQ_WEIGHT_POWER
    fresh = build_roi_loss(roi_cfg("sigmoid", "MODEL.ROI_BOX_HEAD.USE_FED_LOSS", True), C, STATS)
    torch.testing.assert_close(fresh.fed_loss_weights, torch.tensor([50.0, 8.0, 1.0]) ** 0.5)
    with pytest.raises(
        ValueError,
        match="MODEL.ROI_BOX_HEAD.USE_FED_LOSS is on, but MODEL.LT.ROI_LOSS eqlv2 does not",
    ):
        make("eqlv2", "MODEL.ROI_BOX_HEAD.USE_FED_LOSS", True)
