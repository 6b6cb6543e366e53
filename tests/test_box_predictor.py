"""LongTailFastRCNNOutputLayers: loss dispatch, predict_probs contract, BOFL ROI weights, errors."""
import math

import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

import lt_detectron  # noqa: F401
from lt_detectron.engine.progress import set_epoch_length
from lt_detectron.modeling import ROI_LOSSES, LongTailFastRCNNOutputLayers

COUNTS = [100, 10, 1]
C = len(COUNTS)


@pytest.fixture(autouse=True)
def _restore_epoch_length():
    from lt_detectron.engine import progress

    saved = dict(progress._STATE)
    yield
    progress._STATE.update(saved)


def make(loss, **kw):
    torch.manual_seed(0)
    return LongTailFastRCNNOutputLayers(
        ShapeSpec(channels=8),
        box2box_transform=Box2BoxTransform((10.0, 10.0, 5.0, 5.0)),
        num_classes=C,
        loss=loss,
        instance_counts=COUNTS,
        **kw,
    )


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
    expected_logits = C + 1 + (m.cls_loss.layout.num_groups + 1 if loss == "bags" else 0)
    assert scores.shape == (8, expected_logits)
    with EventStorage(0):
        losses = m.losses((scores, deltas), props)
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
    with pytest.raises(ValueError, match="unknown MODEL.LT.ROI_LOSS 'focal'; choose one of softmax"):
        make("focal")
    with pytest.raises(ValueError, match="needs MODEL.LT.ROI_LOSS sigmoid"):
        make("softmax", bofl=dict(enabled=True, batch_counts="batch", kappa=1, eta=0.9, total_epochs=2, deferred_epochs=0, per_iteration=False))


def test_bofl_roi_weights_per_image_against_the_formula():
    bofl = dict(enabled=True, kappa=0.5, eta=0.9, batch_counts="image", total_epochs=4, deferred_epochs=1, per_iteration=False)
    m = make("sigmoid", bofl=bofl)
    set_epoch_length(10)  # iteration 25 -> epoch 2.5 -> e = 2 -> lambda = (2 - 1) / (4 - 1)
    gt_objects = [torch.tensor([0, 0, 1]), torch.tensor([2])]
    m.batch_gt_classes = gt_objects
    props = proposals_for([[0, 1], [2]], rois_per_image=3)
    z = torch.randn(6, C + 1, requires_grad=True)
    with EventStorage(25) as storage:
        loss = m.classification_loss(z, torch.cat([p.gt_classes for p in props]), props)
        assert storage.latest()["bofl/lambda"][0] == pytest.approx(1 / 3)
    lam = 1 / 3
    n = sum(COUNTS)
    alpha = torch.tensor([n / (C * c) for c in COUNTS])
    a_hat = 1 + 0.5 * lam * (alpha - 1)
    eta_hat = 1 + lam * (0.9 - 1)
    w_img = [a_hat * eta_hat ** torch.bincount(g, minlength=C).double() for g in gt_objects]
    w = torch.stack([w_img[0]] * 3 + [w_img[1]] * 3)
    gt = torch.cat([p.gt_classes for p in props])
    target = F.one_hot(gt, C + 1)[:, :C].double()
    ref = (w * F.binary_cross_entropy_with_logits(z[:, :C].double(), target, reduction="none")).sum() / 6
    torch.testing.assert_close(loss.double(), ref, rtol=1e-6, atol=1e-6)


def test_bofl_roi_weights_are_one_while_deferred():
    bofl = dict(enabled=True, kappa=1.0, eta=0.5, batch_counts="batch", total_epochs=4, deferred_epochs=2, per_iteration=False)
    m = make("sigmoid", bofl=bofl)
    plain = make("sigmoid")
    set_epoch_length(10)
    m.batch_gt_classes = [torch.tensor([0, 2])]
    props = proposals_for([[0, 2]])
    z = torch.randn(4, C + 1)
    gt = props[0].gt_classes
    with EventStorage(29):  # epoch 2.9 -> e = 2 = deferred -> lambda 0
        assert torch.equal(m.classification_loss(z, gt, props), plain.classification_loss(z, gt, props))
    with EventStorage(30):  # epoch 3 -> lambda 1/2: weights differ
        assert not torch.equal(m.classification_loss(z, gt, props), plain.classification_loss(z, gt, props))


def test_bofl_needs_the_batch_gt_classes():
    m = make("sigmoid", bofl=dict(enabled=True, kappa=1, eta=0.9, batch_counts="batch", total_epochs=2, deferred_epochs=0, per_iteration=False))
    props = proposals_for([[0]])
    with EventStorage(0), pytest.raises(RuntimeError, match="GT classes of the batch"):
        m.classification_loss(torch.randn(4, C + 1), props[0].gt_classes, props)


def test_federated_loss_trains_only_the_subset_columns():
    m = make("sigmoid", use_fed_loss=True, fed_loss_num_classes=2, fed_loss_weights=[0.0, 0.0, 1.0])
    props = proposals_for([[0]], rois_per_image=4)
    z = torch.randn(4, C + 1, requires_grad=True)
    m.classification_loss(z, props[0].gt_classes, props).backward()
    # GT class 0 and the only samplable class 2 are trained; class 1 (weight 0) is not
    assert (z.grad[:, 1] == 0).all() and (z.grad[:, 0] != 0).all() and (z.grad[:, 2] != 0).all()
    with pytest.raises(ValueError, match="USE_FED_LOSS needs the sigmoid classifier"):
        make("eqlv2", use_fed_loss=True, fed_loss_weights=[1.0, 1.0, 1.0])
