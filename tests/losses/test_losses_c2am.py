"""Tests for lt_detectron.losses.c2am (expected values computed independently in this file)."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from lt_detectron.losses.c2am import c2am_loss, c2am_margins
from lt_detectron.modeling.classifiers import CosineClassifier


def naive_c2am(
    cos, norms, gt, scale=30.0, alpha=0.5, background_margin=True, eps=1e-6, reduction="mean"
):
    """Straightforward acos-based reference."""
    K = cos.shape[1]
    n = norms.detach()
    m = torch.clamp((alpha / math.pi) * torch.log(n[gt][:, None] / n[None, :]), min=0.0)
    if not background_margin:
        m = m.clone()
        m[gt == K - 1] = 0.0
        m[:, K - 1] = 0.0
    theta = torch.acos(torch.clamp(cos, -1 + eps, 1 - eps))
    ang = torch.cos(torch.clamp(theta + m, max=math.pi))
    phi = torch.where(m > 0, ang, cos)
    return F.cross_entropy(scale * phi, gt, reduction=reduction)


def test_margin_values_for_known_ratios():
    norms = torch.tensor([100.0, 10.0, 2.0, 1.0])
    m = c2am_margins(norms, alpha=0.5)
    assert m[2, 3].item() == pytest.approx(0.11, abs=0.005)  # ratio 2
    assert m[1, 3].item() == pytest.approx(0.37, abs=0.005)  # ratio 10
    assert m[0, 3].item() == pytest.approx(0.73, abs=0.005)  # ratio 100
    assert m[0, 3].item() == pytest.approx(0.5 / math.pi * math.log(100), rel=1e-6)
    # only the larger-norm target gets margins against smaller-norm classes
    assert torch.all(m[3] == 0) and torch.all(torch.diag(m) == 0)
    rows = c2am_margins(norms, 0.5, gt_classes=torch.tensor([3, 0]))
    assert torch.equal(rows, m[[3, 0]])
    nb = c2am_margins(norms, 0.5, background_margin=False)  # background = last row/column
    assert torch.all(nb[:, 3] == 0) and torch.all(nb[3] == 0) and nb[0, 1] == m[0, 1]


def test_clamp_at_pi_gives_minus_one_logit():
    s = 30.0
    norms = torch.tensor([math.exp(math.pi), 1.0], dtype=torch.float64)  # m_01 = 0.5 at alpha=0.5
    c0, c1 = 0.3, -0.99  # theta_1 = acos(-0.99) ~ 3.0 -> 3.0 + 0.5 > pi
    cos = torch.tensor([[c0, c1]], dtype=torch.float64, requires_grad=True)
    loss = c2am_loss(cos, norms, torch.tensor([0]), scale=s, alpha=0.5, reduction="none")
    want = math.log(1 + math.exp(s * (-1.0 - c0)))  # non-target logit s*cos(pi) = -s
    assert loss.item() == pytest.approx(want, rel=1e-9)
    loss.sum().backward()
    assert cos.grad[0, 1].item() == 0.0  # clamped: no gradient through the non-target
    # just below the clamp: theta_1 + m < pi, logit = s*cos(theta + m)
    c1b = math.cos(math.pi - 0.6)
    cos_b = torch.tensor([[c0, c1b]], dtype=torch.float64)
    lb = c2am_loss(cos_b, norms, torch.tensor([0]), scale=s, alpha=0.5, reduction="none")
    z1 = s * math.cos(math.pi - 0.1)
    assert lb.item() == pytest.approx(math.log(1 + math.exp(z1 - s * c0)), rel=1e-9)


def test_alpha_zero_is_cosine_softmax_ce():
    g = torch.Generator().manual_seed(0)
    R, K = 50, 7
    cos = torch.rand(R, K, generator=g, dtype=torch.float64) * 2 - 1
    cos[0, 0], cos[1, 3] = 1.0, -1.0  # exact extremes (no clamping on the m = 0 path)
    cos.requires_grad_()
    norms = torch.rand(K, generator=g, dtype=torch.float64) * 10 + 0.1
    gt = torch.randint(0, K, (R,), generator=g)
    loss = c2am_loss(cos, norms, gt, scale=30.0, alpha=0.0)
    ref = F.cross_entropy(30.0 * cos, gt)
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
    (g1,) = torch.autograd.grad(loss, cos)
    (g2,) = torch.autograd.grad(ref, cos)
    torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-12)
    assert g1[0, 0] != 0 or gt[0] == 0  # cos = 1 still has a gradient (no clamp at alpha = 0)


@pytest.mark.parametrize("R", [5, 40])  # R < K: per-row margins; R >= K: table path
@pytest.mark.parametrize("bg_margin", [True, False])
def test_matches_naive_acos(R, bg_margin):
    g = torch.Generator().manual_seed(R)
    K = 11
    cos = (torch.rand(R, K, generator=g, dtype=torch.float64) * 2 - 1).requires_grad_()
    norms = torch.exp(torch.randn(K, generator=g, dtype=torch.float64) * 1.5)
    norms[-1] = norms.max() * 3  # large background norm: bg margins matter
    gt = torch.randint(0, K, (R,), generator=g)
    gt[: R // 3] = K - 1
    for red in ("mean", "sum", "none"):
        loss = c2am_loss(cos, norms, gt, 30.0, 0.5, bg_margin, reduction=red)
        ref = naive_c2am(cos, norms, gt, 30.0, 0.5, bg_margin, reduction=red)
        torch.testing.assert_close(loss, ref)
    loss = c2am_loss(cos, norms, gt, background_margin=bg_margin)
    ref = naive_c2am(cos, norms, gt, background_margin=bg_margin)
    (g1,) = torch.autograd.grad(loss, cos)
    (g2,) = torch.autograd.grad(ref, cos)
    torch.testing.assert_close(g1, g2)
    other = c2am_loss(cos, norms, gt, background_margin=not bg_margin)
    assert not torch.allclose(loss, other)  # the switch changes something


def test_float32_matches_naive():
    g = torch.Generator().manual_seed(3)
    R, K = 300, 50
    cos = (torch.rand(R, K, generator=g) * 2 - 1).requires_grad_()
    norms = torch.rand(K, generator=g) * 5 + 0.2
    gt = torch.randint(0, K, (R,), generator=g)
    loss = c2am_loss(cos, norms, gt)
    ref = naive_c2am(cos, norms, gt)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    (g1,) = torch.autograd.grad(loss, cos)
    (g2,) = torch.autograd.grad(ref, cos)
    torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-6)


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(1)
    R, K = 8, 6
    # cos in (-0.8, 0.9) and norm ratio <= 3 (m <= 0.18): far from the acos clamp and the pi kink
    cos = (torch.rand(R, K, generator=g, dtype=torch.float64) * 1.7 - 0.8).requires_grad_()
    norms = torch.rand(K, generator=g, dtype=torch.float64) * 2 + 1
    gt = torch.randint(0, K, (R,), generator=g)
    assert torch.autograd.gradcheck(
        lambda c: c2am_loss(c, norms, gt, 30.0, 0.5, True, reduction="none"), (cos,)
    )
    assert torch.autograd.gradcheck(lambda c: c2am_loss(c, norms, gt, 30.0, 0.5, False), (cos,))


def test_norms_detached():
    torch.manual_seed(0)
    clf = CosineClassifier(16, 5, scale=None, bias=False)
    with torch.no_grad():
        clf.weight.mul_(
            torch.tensor([1.0, 5.0, 0.5, 2.0, 3.0])[:, None]
        )  # distinct norms -> margins
    x = torch.randn(20, 16)
    gt = torch.randint(0, 5, (20,))
    loss_fn = c2am_loss
    norms = clf.weight_norms()
    assert norms.requires_grad
    loss = loss_fn(clf(x), norms, gt)
    (gn,) = torch.autograd.grad(loss, norms, allow_unused=True, retain_graph=True)
    assert gn is None  # no gradient flows through the margins
    (gw,) = torch.autograd.grad(loss, clf.weight)
    (gw2,) = torch.autograd.grad(loss_fn(clf(x), clf.weight_norms().detach(), gt), clf.weight)
    torch.testing.assert_close(gw, gw2)
    (gw3,) = torch.autograd.grad(naive_c2am(clf(x), clf.weight_norms(), gt), clf.weight)
    torch.testing.assert_close(gw, gw3, rtol=1e-4, atol=1e-7)


def test_empty_batch_zero_loss_connected():
    cos = torch.zeros(0, 4, requires_grad=True)
    loss = c2am_loss(cos, torch.ones(4), torch.zeros(0, dtype=torch.long))
    assert loss.shape == () and loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert cos.grad.shape == (0, 4)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    R=st.integers(0, 30),
    K=st.integers(2, 9),
    bg_frac=st.sampled_from([0.0, 0.5, 1.0]),
    bg_margin=st.booleans(),
    log_norm_spread=st.sampled_from([0.0, 1.0, 10.0, 40.0]),
    extreme=st.booleans(),
)
def test_property_finite(seed, R, K, bg_frac, bg_margin, log_norm_spread, extreme):
    g = torch.Generator().manual_seed(seed)
    if extreme:  # cosines exactly at -1, 0, 1 (and slightly outside from rounding)
        cos = torch.tensor([-1.0000001, -1.0, 0.0, 1.0, 1.0000001])[
            torch.randint(0, 5, (R, K), generator=g)
        ]
    else:
        cos = torch.rand(R, K, generator=g) * 2 - 1
    cos.requires_grad_()
    norms = torch.exp(torch.randn(K, generator=g) * log_norm_spread)
    if seed % 5 == 0:
        norms[0] = 0.0  # a dead row
    gt = torch.randint(0, K, (R,), generator=g)
    gt[torch.rand(R, generator=g) < bg_frac] = K - 1
    loss = c2am_loss(cos, norms, gt, background_margin=bg_margin)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(cos.grad).all()
    if R > 0:
        ref = naive_c2am(cos.detach().double(), norms.double(), gt, background_margin=bg_margin)
        torch.testing.assert_close(loss.double(), ref, rtol=1e-4, atol=1e-4)


def test_multi_chunk_matches_naive():
    g = torch.Generator().manual_seed(9)
    R, K = 6000, 60  # > 2**18 elements -> several row chunks (last one shorter)
    cos = (torch.rand(R, K, generator=g, dtype=torch.float64) * 2 - 1).requires_grad_()
    norms = torch.rand(K, generator=g, dtype=torch.float64) * 4 + 0.1
    gt = torch.randint(0, K, (R,), generator=g)
    loss = c2am_loss(cos, norms, gt)
    ref = naive_c2am(cos, norms, gt)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(torch.autograd.grad(loss, cos)[0], torch.autograd.grad(ref, cos)[0])
