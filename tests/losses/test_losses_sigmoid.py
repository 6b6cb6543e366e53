"""Fused weighted sigmoid BCE core, Detectron2 sigmoid CE loss, focal loss, distributed helpers."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from lt_detectron.losses import (
    ECMLoss,
    EQLv2Loss,
    FusedWeightedBCEFunction,
    all_reduce_sum,
    fused_weighted_bce,
    get_world_size,
    sigmoid_bce_loss,
    sigmoid_focal_loss,
)

D = torch.float64


def naive_weighted_bce(z, gt, neg_w, pos_w, a=1.0, b=None):
    """Reference: materialised one-hot target and F.binary_cross_entropy_with_logits."""
    R, K = z.shape
    y = F.one_hot(gt, K).to(z.dtype)
    w = y * pos_w + (1 - y) * neg_w
    x = a * z + (0 if b is None else b)
    loss = (w * F.binary_cross_entropy_with_logits(x, y, reduction="none")).sum() / R
    s = torch.sigmoid(x.detach())
    pos = (y * w * (1 - s)).sum(0)
    neg = ((1 - y) * w * s).sum(0)
    return loss, pos, neg


def naive_d2_sigmoid_ce(logits, gt, weight=None):
    """Detectron2 main FastRCNNOutputLayers.sigmoid_cross_entropy_loss, transcribed."""
    N, K1 = logits.shape
    K = K1 - 1
    target = logits.new_zeros(N, K + 1)
    target[range(len(gt)), gt] = 1
    target = target[:, :K]
    cls_loss = F.binary_cross_entropy_with_logits(logits[:, :-1], target, reduction="none")
    w = 1 if weight is None else weight
    return torch.sum(cls_loss * w) / N


@pytest.mark.parametrize("a,with_bias", [(1.0, False), (2.0, True), (0.5, False)])
@pytest.mark.parametrize("per_row", [False, True])
def test_fused_matches_naive(a, with_bias, per_row):
    g = torch.Generator().manual_seed(0)
    R, K = 13, 6
    z = (torch.randn(R, K, generator=g, dtype=D) * 6).requires_grad_()
    gt = torch.randint(0, K, (R,), generator=g)
    gt[:3] = K - 1
    shape = (R, K) if per_row else (K,)
    nw = torch.rand(shape, generator=g, dtype=D)
    pw = torch.rand(shape, generator=g, dtype=D) * 3
    b = torch.randn(K, generator=g, dtype=D) if with_bias else None
    loss, pos, neg = fused_weighted_bce(z, gt, nw, pw, a, b, with_stats=True)
    rl, rp, rn = naive_weighted_bce(z, gt, nw, pw, a, b)
    torch.testing.assert_close(loss, rl, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(pos, rp, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(neg, rn, rtol=1e-12, atol=1e-14)
    (g1,) = torch.autograd.grad(2.5 * loss, z)
    (g2,) = torch.autograd.grad(2.5 * rl, z)
    torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(
    "a,with_bias,per_row", [(1.0, False, False), (2.0, True, False), (1.0, False, True)]
)
def test_fused_gradcheck(a, with_bias, per_row):
    g = torch.Generator().manual_seed(1)
    R, K = 5, 4
    z = (torch.randn(R, K, generator=g, dtype=D) * 3).requires_grad_()
    gt = torch.tensor([0, 3, 1, 3, 2])
    shape = (R, K) if per_row else (K,)
    nw = torch.rand(shape, generator=g, dtype=D) + 0.1
    pw = torch.rand(shape, generator=g, dtype=D) + 1.0
    b = torch.randn(K, generator=g, dtype=D) if with_bias else None
    f = lambda z: FusedWeightedBCEFunction.apply(z, gt, nw, pw, a, b, False)[0]  # noqa: E731
    assert torch.autograd.gradcheck(f, (z,))


def test_sigmoid_bce_matches_detectron2():
    g = torch.Generator().manual_seed(2)
    R, C = 20, 7
    z = (torch.randn(R, C + 1, generator=g, dtype=D) * 4).requires_grad_()
    gt = torch.randint(0, C + 1, (R,), generator=g)
    gt[:5] = C
    for w in [
        None,
        torch.rand(C, generator=g, dtype=D),
        (torch.rand(C, generator=g) > 0.5).to(D),
        torch.rand(R, C, generator=g, dtype=D),
    ]:
        loss = sigmoid_bce_loss(z, gt, w)
        ref = naive_d2_sigmoid_ce(z, gt, w)
        torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
        (g1,) = torch.autograd.grad(loss, z)
        (g2,) = torch.autograd.grad(ref, z)
        torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-15)
        assert torch.all(g1[:, C] == 0)  # background column never trained


def test_float32_close_to_float64_for_extreme_logits():
    g = torch.Generator().manual_seed(3)
    R, C = 64, 9
    z64 = torch.empty(R, C + 1, dtype=D).uniform_(-80, 80, generator=g)
    gt = torch.randint(0, C + 1, (R,), generator=g)
    z32 = z64.float().requires_grad_()
    z64.requires_grad_()
    l32 = sigmoid_bce_loss(z32, gt)
    l64 = sigmoid_bce_loss(z64, gt)
    assert torch.isfinite(l32)
    torch.testing.assert_close(l32.double(), l64, rtol=1e-5, atol=1e-5)
    (g32,) = torch.autograd.grad(l32, z32)
    (g64,) = torch.autograd.grad(l64, z64)
    torch.testing.assert_close(g32.double(), g64, rtol=1e-5, atol=1e-7)


def test_empty_batch_connected():
    z = torch.zeros(0, 5, requires_grad=True)
    gt = torch.zeros(0, dtype=torch.long)
    loss = sigmoid_bce_loss(z, gt)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert z.grad.shape == (0, 5)
    l, p, n = fused_weighted_bce(z, gt, torch.ones(5), with_stats=True)
    assert l.item() == 0 and torch.all(p == 0) and torch.all(n == 0)


def test_half_input_runs_in_float32():
    z = (torch.randn(6, 4) * 3).half().requires_grad_()
    gt = torch.tensor([0, 1, 2, 3, 3, 1])
    loss = sigmoid_bce_loss(z, gt)
    assert loss.dtype == torch.float32
    loss.backward()
    assert z.grad.dtype == torch.float16
    ref = naive_d2_sigmoid_ce(z.detach().float(), gt)
    torch.testing.assert_close(loss.detach(), ref, rtol=1e-6, atol=1e-6)


def test_autocast_does_not_change_result():
    g = torch.Generator().manual_seed(5)
    z = torch.randn(64, 300, generator=g) * 3 - 4
    gt = torch.randint(0, 300, (64,), generator=g)
    eql = EQLv2Loss(299).eval()
    eql.pos_neg.uniform_(0, 2, generator=g)
    ref = (sigmoid_bce_loss(z, gt), eql(z, gt))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = (sigmoid_bce_loss(z, gt), eql(z, gt))
    for a, b in zip(out, ref):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=1e-6, atol=0)


def test_focal_matches_fvcore_and_weight():
    fvcore = pytest.importorskip("fvcore.nn")
    g = torch.Generator().manual_seed(4)
    z = torch.randn(30, 5, generator=g) * 5
    t = (torch.rand(30, 5, generator=g) > 0.8).float()
    for red in ["none", "sum", "mean"]:
        ref = fvcore.sigmoid_focal_loss(z, t, alpha=0.25, gamma=2.0, reduction=red)
        assert torch.equal(sigmoid_focal_loss(z, t, 0.25, 2.0, red), ref)
    w = torch.rand(5, generator=g)
    ref = fvcore.sigmoid_focal_loss(z, t, alpha=0.25, gamma=2.0, reduction="none") * w
    torch.testing.assert_close(sigmoid_focal_loss(z, t, weight=w), ref)
    assert torch.equal(
        sigmoid_focal_loss(z, t, weight=torch.ones(5), reduction="sum"),
        sigmoid_focal_loss(z, t, reduction="sum"),
    )


def test_distributed_helpers_noop():
    assert get_world_size() == 1
    x = torch.arange(3.0)
    assert all_reduce_sum(x) is x and torch.equal(x, torch.arange(3.0))


# ---------------------------------------------------------------- property tests (all sigmoid-family losses)
@st.composite
def batches(draw):
    R = draw(st.integers(0, 6))
    C = draw(st.integers(1, 5))
    vals = draw(
        st.lists(
            st.floats(-80, 80, allow_nan=False, width=32),
            min_size=R * (C + 1),
            max_size=R * (C + 1),
        )
    )
    gt = draw(st.lists(st.integers(0, C), min_size=R, max_size=R))
    all_bg = draw(st.booleans())
    z = torch.tensor(vals, dtype=torch.float32).reshape(R, C + 1)
    gt = torch.tensor(gt, dtype=torch.long).reshape(R)
    if all_bg:
        gt[:] = C
    counts = draw(
        st.lists(st.integers(0, 1000), min_size=C, max_size=C)
    )  # zero-count classes allowed
    return z, gt, C, counts


@settings(max_examples=25, deadline=None)
@given(batches())
def test_property_finite(batch):
    z, gt, C, counts = batch
    R = z.shape[0]
    eql = EQLv2Loss(C).train()
    ecm = ECMLoss(counts, measure_iters=1).train()
    for name, fn in [
        ("bce", lambda x: sigmoid_bce_loss(x, gt)),
        ("eql", lambda x: eql(x, gt)),
        ("eql2", lambda x: eql(x, gt)),
        ("ecm", lambda x: ecm(x, gt)),
    ]:
        x = z.clone().requires_grad_()
        loss = fn(x)
        assert loss.dim() == 0 and torch.isfinite(loss), name
        loss.backward()
        assert torch.isfinite(x.grad).all(), name
        if R == 0:
            assert loss.item() == 0.0
    for buf in (eql.pos_grad, eql.neg_grad, eql.pos_neg, ecm.margins, ecm.weights, ecm.bg_fg_ratio):
        assert torch.isfinite(buf).all()
