"""EQL v1 against a naive float64 transcription of the authors' loss (docs/methods.md#eql-v1).

The authors' head has C class outputs (no background column); the transcription below works on
those C logits, re-deriving the weight w = 1 - E(r) T(f_j) (1 - y) from the paper's equations and
their code's reading of them (E(r) = 1 on foreground ROIs, T(f) = 1 iff f < lambda, sum / R).
"""

import numpy as np
import pytest
import torch

from lt_detectron.class_stats import ClassStats
from lt_detectron.losses import ROI_LOSS_REGISTRY, EQLv1Loss, build_roi_loss
from lt_detectron.utils.testing import lt_cfg

D = torch.float64


def authors_eql(z_cls, gt, freq, lambda_):
    """Naive EQL v1 on the C class logits (R, C); gt in [0, C], C = background. Float64."""
    R, C = z_cls.shape
    target = torch.zeros(R, C + 1, dtype=D)
    target[torch.arange(R), gt] = 1.0
    target = target[:, :C]
    exclude = (gt != C).to(D)[:, None].expand(R, C)
    threshold = torch.tensor([1.0 if f < lambda_ else 0.0 for f in freq], dtype=D)
    w = 1.0 - exclude * threshold[None, :] * (1.0 - target)
    p = torch.sigmoid(z_cls)
    bce = -(target * torch.log(p) + (1.0 - target) * torch.log(1.0 - p))
    return (bce * w).sum() / R


def _loss(image_counts, num_images, lambda_):
    return EQLv1Loss(
        len(image_counts), image_counts=image_counts, num_images=num_images, lambda_=lambda_
    )


def _compare(loss, z, gt, freq, lambda_):
    z1 = z.clone().requires_grad_(True)
    ours = loss(z1, gt)
    ours.backward()
    zc = z[:, :-1].clone().requires_grad_(True)
    ref = authors_eql(zc, gt, freq, lambda_)
    ref.backward()
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(z1.grad[:, :-1], zc.grad, rtol=1e-12, atol=1e-12)
    # the background column is not part of the loss
    assert torch.count_nonzero(z1.grad[:, -1]) == 0
    return ours


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_parity_with_authors_loss_random(seed):
    g = torch.Generator().manual_seed(seed)
    C, R, N = 7, 40, 500
    counts = torch.randint(0, 6, (C,), generator=g).tolist()
    lambda_ = 3.5 / N  # classes with <= 3 images are tail
    freq = [c / N for c in counts]
    z = torch.randn(R, C + 1, generator=g, dtype=D) * 3.0
    gt = torch.randint(0, C + 1, (R,), generator=g)
    loss = _loss(counts, N, lambda_)
    _compare(loss, z, gt, freq, lambda_)
    # the suppression matters: not the plain sigmoid BCE unless no fg ROI meets a tail class
    assert loss.tail.sum() > 0


def test_parity_all_background_batch():
    g = torch.Generator().manual_seed(3)
    C, R = 5, 16
    counts, N, lambda_ = [0, 1, 2, 50, 400], 1000, 0.01
    z = torch.randn(R, C + 1, generator=g, dtype=D)
    gt = torch.full((R,), C)
    ours = _compare(_loss(counts, N, lambda_), z, gt, [c / N for c in counts], lambda_)
    # E(r) = 0 everywhere: every class keeps its negative term, i.e. plain BCE on the C columns
    plain = torch.nn.functional.softplus(z[:, :C]).sum() / R
    torch.testing.assert_close(ours, plain)


def test_lambda_at_exact_frequency():
    """f_j == lambda is not tail (strict <): its negatives on foreground ROIs are kept."""
    counts, N = [2, 1, 50], 1000
    lambda_ = 2 / N
    loss = _loss(counts, N, lambda_)
    assert loss.tail.tolist() == [0.0, 1.0, 0.0]
    g = torch.Generator().manual_seed(4)
    z = torch.randn(12, 4, generator=g, dtype=D)
    gt = torch.tensor([0, 1, 2, 3] * 3)
    _compare(loss, z, gt, [c / N for c in counts], lambda_)
    # one step above the frequency makes class 0 tail too
    assert _loss(counts, N, np.nextafter(lambda_, 1.0)).tail.tolist() == [1.0, 1.0, 0.0]


def test_value_by_hand():
    """Two classes, class 1 tail; one ROI of class 0, one background ROI; zero logits.

    fg ROI: BCE(0, 1) on class 0 = log 2; class 1 is tail and negative: dropped.
    bg ROI: both classes negative and kept: 2 log 2. Sum 3 log 2, divided by R = 2.
    """
    loss = _loss([10, 0], 10, 0.5)
    z = torch.zeros(2, 3, dtype=D, requires_grad=True)
    out = loss(z, torch.tensor([0, 2]))
    assert out.item() == pytest.approx(1.5 * np.log(2.0), rel=1e-12)
    out.backward()
    # d/dz BCE = sigma - y, times w, divided by R: fg row [-1/2, 0, 0] / 2, bg row [1/2, 1/2, 0] / 2
    expected = torch.tensor([[-0.25, 0.0, 0.0], [0.25, 0.25, 0.0]], dtype=D)
    torch.testing.assert_close(z.grad, expected)


def test_float16_and_huge_logits_finite():
    loss = _loss([10, 0, 3], 100, 0.05)
    z = torch.tensor([[1e4, -1e4, 3.0, 0.0], [-1e4, 1e4, 0.0, 2.0]], requires_grad=True)
    out = loss(z, torch.tensor([0, 3]))
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(z.grad).all()
    out16 = loss(torch.randn(3, 4).half(), torch.tensor([0, 1, 3]))
    assert out16.dtype == torch.float32 and torch.isfinite(out16)


def test_registered_and_built_from_config():
    assert "eqlv1" in ROI_LOSS_REGISTRY.names()
    stats = ClassStats(
        ("t",), ("a", "b", "c"), (1, 2, 3), [30, 5, 1], [20, 4, 1], 1000, np.array(["f", "c", "r"])
    )
    cfg = lt_cfg(None, "MODEL.LT.ROI_LOSS", "eqlv1", "MODEL.LT.EQLV1.LAMBDA", 0.0045)
    loss = build_roi_loss(cfg, 3, stats)
    assert isinstance(loss, EQLv1Loss)
    # frequencies 0.02, 0.004, 0.001 against 0.0045
    assert loss.tail.tolist() == [0.0, 1.0, 1.0]
    assert loss.classifier_spec().prior_prob == pytest.approx(0.001)
    assert "tail" not in loss.state_dict()  # rebuilt from the class statistics


def test_failure_modes():
    cfg = lt_cfg(None, "MODEL.LT.ROI_LOSS", "eqlv1")
    with pytest.raises(ValueError, match="DATASETS.TRAIN"):
        build_roi_loss(cfg, 3, None)
    with pytest.raises(ValueError, match="MODEL.LT.EQLV1.LAMBDA"):
        _loss([1, 2], 10, 1.5)
    with pytest.raises(ValueError, match="num_images"):
        _loss([1, 2], 0, 0.1)
    with pytest.raises(ValueError, match="image counts"):
        EQLv1Loss(3, image_counts=[1, 2], num_images=10)
    with pytest.raises(ValueError, match=r"\(R, 3\)"):
        _loss([1, 2], 10, 0.1)(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))
    from lt_detectron.config import LTConfigError, validate_lt_config

    with pytest.raises(LTConfigError, match="MODEL.LT.EQLV1.LAMBDA"):
        validate_lt_config(lt_cfg(None, "MODEL.LT.EQLV1.LAMBDA", -0.1))


def test_predict_probs_background_last():
    loss = _loss([1, 2], 10, 0.1)
    z = torch.tensor([[0.0, 2.0, 5.0]])
    p = loss.predict_probs(z)
    torch.testing.assert_close(
        p, torch.tensor([[0.5, float(torch.sigmoid(torch.tensor(2.0))), 0.0]])
    )
