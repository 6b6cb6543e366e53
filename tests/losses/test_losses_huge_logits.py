"""Issue 22 item 6: the fused sigmoid BCE (EQL v2, ECM, the sigmoid loss) is exact for huge and tiny
logits. The reference is ``F.binary_cross_entropy_with_logits`` in float64 on a materialised one-hot
target, with the weights each loss passes to the fused core (recorded, not recomputed)."""

import pytest
import torch
import torch.nn.functional as F

from lt_detectron.losses import ECMLoss, EQLv2Loss, sigmoid_bce_loss
from lt_detectron.losses import ecm as ecm_mod, eqlv2 as eqlv2_mod, sigmoid as sigmoid_mod

D = torch.float64
C = 4  # foreground classes; logits are (R, C + 1), background last


def reference_bce(z, gt, neg_w, pos_w, a=1.0, b=None):
    """(1/R) sum w * BCE(a z + b, onehot(gt)) with F.bce in float64."""
    z = z.to(D)
    R, K = z.shape
    y = F.one_hot(gt, K).to(D)
    w = y * pos_w.to(D) + (1 - y) * neg_w.to(D)
    x = a * z + (0 if b is None else b.to(D))
    return (w * F.binary_cross_entropy_with_logits(x, y, reduction="none")).sum() / R


def _logits(huge, confident):
    """Rows of logits built from {+-huge, 0, moderate}. ``confident``: every gt entry is +huge and
    the other entries are -huge or moderate (loss ~ tens: the case that read 0), else every sign."""
    gt = torch.tensor([0, 1, 2, 3, C, C, 0, 2])
    R, K = len(gt), C + 1
    g = torch.Generator().manual_seed(0)
    z = torch.randn(R, K, generator=g, dtype=D) * 3
    if confident:
        z[torch.arange(R) % 2 == 0] = -huge
        z[torch.arange(R), gt] = huge
        z[1, 3] = 0.0
    else:
        vals = torch.tensor([huge, -huge, 0.0], dtype=D)
        z = vals[torch.arange(R * K) % 3].reshape(R, K)
        z[3, :] = torch.randn(K, generator=g, dtype=D)
    return z.float(), gt


def _run(name, z, gt):
    """Call the loss ``name`` on float32 logits; returns (loss, the fused core's call args)."""
    calls = []
    real = sigmoid_mod.fused_weighted_bce
    mod = {"sigmoid": sigmoid_mod, "eqlv2": eqlv2_mod, "ecm": ecm_mod}[name]

    def spy(
        logits,
        gt_classes,
        neg_weight,
        pos_weight=None,
        input_scale=1.0,
        input_bias=None,
        with_stats=False,
    ):
        calls.append(
            (
                neg_weight.detach().clone(),
                (neg_weight if pos_weight is None else pos_weight).detach().clone(),
                input_scale,
                None if input_bias is None else input_bias.detach().clone(),
            )
        )
        return real(logits, gt_classes, neg_weight, pos_weight, input_scale, input_bias, with_stats)

    setattr(mod, "fused_weighted_bce", spy)
    try:
        if name == "sigmoid":
            loss = sigmoid_bce_loss(z, gt, torch.tensor([1.0, 0.5, 2.0, 1.0]))
        elif name == "eqlv2":
            m = EQLv2Loss(C).train()
            m.pos_neg.copy_(torch.tensor([0.0, 0.5, 0.8, 3.0]))  # weights away from 1
            loss = m(z, gt)
        else:
            loss = ECMLoss([5, 40, 300, 1], bg_fg_ratio=3.0)(z, gt)
    finally:
        setattr(mod, "fused_weighted_bce", real)
    assert len(calls) == 1
    return loss, calls[0]


@pytest.mark.parametrize("name", ["sigmoid", "eqlv2", "ecm"])
@pytest.mark.parametrize("huge", [1e8, 1e30])
@pytest.mark.parametrize("confident", [True, False])
def test_fused_bce_exact_for_huge_logits(name, huge, confident):
    z, gt = _logits(huge, confident)
    z32 = z.clone().requires_grad_()
    loss, (neg_w, pos_w, a, b) = _run(name, z32, gt)
    z64 = z.to(D).requires_grad_()
    ref = reference_bce(z64, gt, neg_w, pos_w, a, b)
    assert torch.isfinite(ref) and ref > 1.0  # a loss that can read 0 only through a bug
    torch.testing.assert_close(loss.to(D), ref, rtol=2e-6, atol=0)
    (g32,) = torch.autograd.grad(loss, z32)
    (g64,) = torch.autograd.grad(ref, z64)
    torch.testing.assert_close(g32.to(D), g64, rtol=2e-6, atol=1e-12)


def test_fused_bce_all_zero_logits():
    z = torch.zeros(5, C + 1, requires_grad=True)
    gt = torch.tensor([0, 1, C, 3, C])
    w = torch.rand(C + 1, generator=torch.Generator().manual_seed(3))
    loss, _, _ = sigmoid_mod.fused_weighted_bce(z, gt, w, w * 2)
    ref = reference_bce(z.detach(), gt, w, w * 2)
    torch.testing.assert_close(loss.to(D), ref, rtol=2e-6, atol=0)
