"""Issue 24 item 3 (losses back under their speed goals): the fused losses keep their values and
gradients while avoiding torch's slow log1p and (R, K) temporaries. References are written out here
in float64 with autograd (softplus as log(1 + exp(x)) split at 0, the one-hot BCE, fvcore's focal
formula, C2AM's cos(min(acos(c) + m, pi))); no timing is asserted (speed: benchmarks/README.md)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from lt_detectron.losses import ECMLoss, EQLv2FocalLoss, EQLv2Loss
from lt_detectron.losses.c2am import c2am_loss
from lt_detectron.losses.chunks import row_chunk_size
from lt_detectron.losses.fast_softplus import log1p_exp_neg_abs_into, softplus_into
from lt_detectron.losses.sigmoid import fused_weighted_bce
from lt_detectron.losses.weighted_focal import fused_weighted_focal

D = torch.float64


def _softplus64(x):
    """log(1 + exp(x)) in float64 with torch's log1p (exact to rounding, only slower)."""
    x = x.to(D)
    return x.clamp_min(0) + torch.log1p(torch.exp(-x.abs()))


def test_softplus_into_matches_float64_to_rounding():
    for dtype in (torch.float32, torch.float64):
        fin = torch.finfo(dtype)
        x = torch.cat(
            [
                torch.linspace(-120, 120, 48001, dtype=dtype),
                torch.tensor([1e30, -1e30, 1e8, -1e8, 0.0, -0.0, 1e-30, -1e-30], dtype=dtype),
            ]
        )
        out, scratch = torch.empty_like(x), torch.empty_like(x)
        got = softplus_into(x, out, scratch).to(D)
        ref = _softplus64(x)
        normal = ref > fin.tiny
        rel = ((got - ref).abs() / ref)[normal]
        assert rel.max() < 2 * fin.eps, (dtype, rel.max().item())
        assert got[x == 1e30].item() == float(torch.tensor(1e30, dtype=dtype))
        assert got[x == -1e30].item() == 0.0
        # log1p(exp(-|x|)) alone: the same identity, also when 1 + e rounds to 1
        lg = log1p_exp_neg_abs_into(x, out, scratch).to(D)
        lref = torch.log1p(torch.exp(-x.to(D).abs()))
        ok = lref > fin.tiny
        assert (((lg - lref).abs() / lref)[ok]).max() < 2 * fin.eps


def test_softplus_into_infinities_and_nan():
    x = torch.tensor([float("inf"), float("-inf"), float("nan"), 3.0])
    got = softplus_into(x, torch.empty_like(x), torch.empty_like(x))
    assert got[0] == float("inf") and got[1] == 0.0 and torch.isnan(got[2])
    assert got[3].item() == pytest.approx(math.log1p(math.exp(3.0)), rel=1e-6)


def _naive_bce(z, gt, neg_w, pos_w, a=1.0, b=None):
    """(1/R) sum w BCE(a z + b, onehot) in float64 with autograd; w (K,) or (R, K)."""
    R, K = z.shape
    y = F.one_hot(gt, K).to(D)
    w = y * pos_w.to(D) + (1 - y) * neg_w.to(D)
    x = a * z + (0 if b is None else b.to(D))
    bce = y * _softplus64(-x) + (1 - y) * _softplus64(x)
    return (w * bce).sum() / R


def _logits(R, K, seed, dtype, huge=True):
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(R, K, generator=g, dtype=D) * 3 - 2).to(dtype)
    gt = torch.randint(0, K, (R,), generator=g)
    if huge:  # +-1e30 on and off the gt entries
        z[0, gt[0]] = 1e30
        z[1, gt[1]] = -1e30
        z[2, (gt[2] + 1) % K] = 1e30
        z[3, (gt[3] + 1) % K] = -1e30
    return z, gt


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("form", ["plain", "ecm", "per_roi_weights"])
def test_fused_bce_gradcheck_against_naive_float64(dtype, form):
    """Loss, gradient and EQL v2 statistics of the fused BCE against a float64 autograd transcription,
    with huge logits, per-column or per-ROI weights, and a, b (ECM's 2 z + delta); R spans several
    row chunks."""
    K = 37
    R = 3 * row_chunk_size(10**6, K, torch.device("cpu")) // 2 if dtype == torch.float32 else 300
    z, gt = _logits(R, K, 0, dtype)
    g = torch.Generator().manual_seed(1)
    neg_w = torch.rand(K, generator=g, dtype=dtype)
    pos_w = 1 + 4 * torch.rand(K, generator=g, dtype=dtype)
    a, b = (2.0, torch.randn(K, generator=g, dtype=dtype)) if form == "ecm" else (1.0, None)
    if form == "per_roi_weights":
        neg_w = torch.rand(R, K, generator=g, dtype=dtype)
    zf = z.clone().requires_grad_()
    loss, pos_stat, neg_stat = fused_weighted_bce(zf, gt, neg_w, pos_w, a, b, with_stats=True)
    (grad,) = torch.autograd.grad(loss * 3.0, zf)  # an output gradient other than 1
    z64 = z.to(D).requires_grad_()
    ref = _naive_bce(z64, gt, neg_w, pos_w, a, b)
    (gref,) = torch.autograd.grad(ref * 3.0, z64)
    tol = 2e-6 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(loss.to(D), ref.detach(), rtol=tol, atol=0)
    torch.testing.assert_close(grad.to(D), gref, rtol=tol, atol=tol * 1e-3)
    # statistics: w |sigma(x) - y| summed over rows, split by target
    with torch.no_grad():
        x = a * z.to(D) + (0 if b is None else b.to(D))
        y = F.one_hot(gt, K).to(D)
        nw = neg_w.to(D) if neg_w.dim() == 2 else neg_w.to(D).expand(R, K)
        pos_ref = (y * pos_w.to(D) * torch.sigmoid(-x)).sum(0)
        neg_ref = ((1 - y) * nw * torch.sigmoid(x)).sum(0)
    torch.testing.assert_close(pos_stat.to(D), pos_ref, rtol=tol, atol=tol)
    torch.testing.assert_close(neg_stat.to(D), neg_ref, rtol=tol, atol=tol)


def test_fused_bce_torch_gradcheck_and_retained_graph():
    z, gt = _logits(9, 5, 3, D, huge=False)
    z.requires_grad_()
    w = torch.rand(5, dtype=D, generator=torch.Generator().manual_seed(2))
    b = torch.randn(5, dtype=D, generator=torch.Generator().manual_seed(4))
    f = lambda t: fused_weighted_bce(t, gt, w, 2 * w, 2.0, b)[0]  # noqa: E731
    assert torch.autograd.gradcheck(f, (z,))
    loss = f(z)
    (g1,) = torch.autograd.grad(loss, z, retain_graph=True)
    (g2,) = torch.autograd.grad(loss, z)
    torch.testing.assert_close(g1, g2, rtol=0, atol=0)


def test_ecm_margins_updated_between_forward_and_backward():
    """b is saved for the recomputing backward: a measured ratio that changes the margins in the
    same forward must not change (or break) this batch's gradient."""
    counts = [5, 40, 300, 1]
    m = ECMLoss(counts, measure_iters=1).train()
    z, gt = _logits(16, 5, 5, torch.float32, huge=False)
    zf = z.clone().requires_grad_()
    margins, weights = m.margins.clone(), m.weights.clone()
    loss = m(zf, gt)  # the first (and only) measured call recomputes the margins
    assert not torch.equal(m.margins, margins)
    loss.backward()
    z64 = z.to(D).requires_grad_()
    _naive_bce(z64, gt, weights, weights, 2.0, margins).backward()
    torch.testing.assert_close(zf.grad.to(D), z64.grad, rtol=2e-6, atol=1e-9)


def _naive_focal(z, labels, neg_w, pos_w, alpha=0.25, gamma=2.0):
    """sum w alpha_t (1 - p_t)^gamma BCE, y = onehot(labels)[:, :C], in float64 (fvcore's formula)."""
    C = z.shape[1]
    y = F.one_hot(labels, C + 1)[:, :C].to(D)
    p = torch.sigmoid(z)
    bce = y * _softplus64(-z) + (1 - y) * _softplus64(z)
    p_t = p * y + (1 - p) * (1 - y)
    a_t = alpha * y + (1 - alpha) * (1 - y)
    w = y * pos_w.to(D) + (1 - y) * neg_w.to(D)
    return (w * a_t * (1 - p_t) ** gamma * bce).sum()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("gamma", [2.0, 1.5, 0.0])
def test_fused_focal_gradcheck_against_naive_float64(dtype, gamma):
    C = 11
    M = 2 * row_chunk_size(10**6, C, torch.device("cpu")) + 5 if dtype == torch.float32 else 200
    g = torch.Generator().manual_seed(6)
    z = (torch.randn(M, C, generator=g, dtype=D) * 3 - 3).to(dtype)
    labels = torch.randint(0, C, (M,), generator=g)
    labels[torch.rand(M, generator=g) > 0.1] = C  # background rows
    labels[:4] = torch.tensor([0, 1, C, 2])
    z[0, 0], z[1, 1], z[2, 3], z[3, 2] = 1e30, -40.0, -1e30, 25.0
    neg_w = torch.rand(C, generator=g, dtype=dtype)
    pos_w = 1 + 4 * torch.rand(C, generator=g, dtype=dtype)
    zf = z.clone().requires_grad_()
    loss, pos_stat, neg_stat = fused_weighted_focal(zf, labels, neg_w, pos_w, 0.25, gamma, True)
    (grad,) = torch.autograd.grad(loss * 0.5, zf)
    z64 = z.to(D).requires_grad_()
    ref = _naive_focal(z64, labels, neg_w, pos_w, 0.25, gamma)
    (gref,) = torch.autograd.grad(ref * 0.5, z64)
    tol = 2e-6 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(loss.to(D), ref.detach(), rtol=tol, atol=0)
    # float32: 1 - p_t of a confident entry carries eps / (1 - p) relative error, as in fvcore's
    torch.testing.assert_close(grad.to(D), gref, rtol=tol, atol=2e-7 if tol > 1e-9 else 1e-14)
    y = F.one_hot(labels, C + 1)[:, :C].to(D)
    with torch.no_grad():
        pos_ref = (y * pos_w.to(D) * torch.sigmoid(-z.to(D))).sum(0)
        neg_ref = ((1 - y) * neg_w.to(D) * torch.sigmoid(z.to(D))).sum(0)
    torch.testing.assert_close(pos_stat.to(D), pos_ref, rtol=tol, atol=tol)
    torch.testing.assert_close(neg_stat.to(D), neg_ref, rtol=tol, atol=tol)


def test_fused_focal_torch_gradcheck_and_empty():
    g = torch.Generator().manual_seed(8)
    z = torch.randn(12, 4, generator=g, dtype=D).requires_grad_()
    labels = torch.tensor([0, 4, 1, 4, 3, 2, 4, 4, 0, 1, 4, 2])
    w = torch.rand(4, generator=g, dtype=D)
    assert torch.autograd.gradcheck(lambda t: fused_weighted_focal(t, labels, w, 1 + w)[0], (z,))
    e = torch.zeros(0, 4, requires_grad=True)
    loss, ps, ns = fused_weighted_focal(e, torch.zeros(0, dtype=torch.long), w, w, with_stats=True)
    assert loss.item() == 0.0 and loss.requires_grad and ps.eq(0).all() and ns.eq(0).all()
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        fused_weighted_focal(z, labels, w, w, gamma=-1.0)


def _naive_c2am(cos, norms, gt, scale=30.0, alpha=0.5, eps=1e-6):
    logn = norms.to(D).log()
    m = ((alpha / math.pi) * (logn[gt][:, None] - logn[None, :])).clamp(0, math.pi)
    theta = torch.acos(cos.clamp(-1 + eps, 1 - eps))
    z = torch.where(m > 0, torch.cos(torch.clamp(theta + m, max=math.pi)), cos)
    return F.cross_entropy(scale * z, gt)


def test_c2am_gradient_handed_on_once_and_retained_graph():
    """C2AM hands its saved gradient on when the output gradient is 1: the gradient equals the
    float64 autograd transcription, and a retained graph gives the same gradient twice."""
    g = torch.Generator().manual_seed(9)
    K = 7
    cos = (torch.rand(40, K, generator=g, dtype=D) * 2 - 1).requires_grad_()
    norms = 0.5 + 1.5 * torch.rand(K, generator=g, dtype=D)
    gt = torch.randint(0, K, (40,), generator=g)
    loss = c2am_loss(cos, norms, gt)
    (g1,) = torch.autograd.grad(loss, cos, retain_graph=True)
    (g2,) = torch.autograd.grad(loss, cos, retain_graph=True)
    (g3,) = torch.autograd.grad(loss * 2.0, cos)
    (gref,) = torch.autograd.grad(_naive_c2am(cos, norms, gt), cos)
    torch.testing.assert_close(g1, gref, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(g2, g1, rtol=0, atol=0)
    torch.testing.assert_close(g3, 2 * g1, rtol=1e-12, atol=0)
    loss.detach_()
    cos.grad = None
    c2am_loss(cos, norms, gt).backward()  # a leaf: the gradient ends in .grad
    torch.testing.assert_close(cos.grad, gref, rtol=1e-9, atol=1e-12)


def _slow_ops_on_full_logits(fn, shape):
    """Names of log1p-class ops (softplus, log1p, log_sigmoid, BCE with logits) run on a tensor of
    ``shape`` (or larger) while ``fn`` runs forward and backward."""
    slow = ("softplus", "log1p", "log_sigmoid", "binary_cross_entropy_with_logits")
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    n = shape[0] * shape[1]
    found = []
    for ev in prof.events():
        if any(s in ev.name for s in slow):
            sizes = [math.prod(s) for s in ev.input_shapes if s]
            if sizes and max(sizes) >= n:
                found.append(ev.name)
    return found


def test_one_softplus_class_pass_at_most_no_log1p_on_full_logits():
    """The brief's "one softplus-class pass per step at most, or a cheaper identity": EQL v2, ECM
    (ROI) and dense EQL v2 run no softplus / log1p / log-sigmoid / BCE-with-logits over the logits
    (the identity of fast_softplus.py instead); only R-sized gt terms may use them."""
    C = 30
    z, gt = _logits(64, C + 1, 10, torch.float32, huge=False)
    z.requires_grad_()
    eql = EQLv2Loss(C).train()
    ecm = ECMLoss(list(range(1, C + 1)))
    dense = EQLv2FocalLoss(C).train()
    zd = torch.randn(64, C, requires_grad=True)
    for name, fn, shape in (
        ("eqlv2", lambda: eql(z, gt).backward(), z.shape),
        ("ecm", lambda: ecm(z, gt).backward(), z.shape),
        ("dense eqlv2", lambda: dense(zd, gt.clamp(max=C)).backward(), zd.shape),
    ):
        assert _slow_ops_on_full_logits(fn, shape) == [], name
