"""ECM loss (docs/methods.md#ecm): margins/weights, loss vs the probability-form reference, measured r."""

import io

import pytest
import torch
import torch.nn.functional as F

from lt_detectron.losses import ECMFocalLoss, ECMLoss, ecm_margins_and_weights, objectness_scores

D = torch.float64


def supplement_weights(n_pos, n_neg):
    """gamma+ = n+^(-1/4) / (n+^(-1/4) + n-^(-1/4)), w+- = 1/gamma+- (supplement Eqs. 2-11)."""
    gp = n_pos**-0.25 / (n_pos**-0.25 + n_neg**-0.25)
    return 1.0 / gp, 1.0 / (1.0 - gp)


def naive_ecm(z, gt, counts, r):
    """Official-code form: s_hat = w+ e^z / (w+ e^z + w- e^-z), BCE on probabilities, m_c weights, / R."""
    n = torch.tensor(list(counts) + [r * sum(counts)], dtype=D)
    n_neg = n.sum() - n
    wp, wn = supplement_weights(n, n_neg)
    a = n_neg / n
    m = a * torch.log((1 + a) / a)
    s = wp * torch.exp(z) / (wp * torch.exp(z) + wn * torch.exp(-z))
    y = F.one_hot(gt, z.shape[1]).to(D)
    bce = -(y * torch.log(s) + (1 - y) * torch.log(1 - s))
    return (m * bce).sum() / z.shape[0]


def test_closed_form_equals_supplement():
    counts = [3, 10, 250, 7]
    delta, m = ecm_margins_and_weights(counts, 2.5)
    n = torch.tensor(counts + [2.5 * sum(counts)], dtype=D)
    wp, wn = supplement_weights(n, n.sum() - n)
    torch.testing.assert_close(delta, torch.log(wp / wn))
    assert delta.shape == (5,) and m.shape == (5,)


def test_lvis_table_values():
    total = 1_270_141
    counts = [1, 50_552, total - 50_553]  # rarest, most frequent, everything else lumped
    delta, m = ecm_margins_and_weights(counts, 6.3313)
    assert round(delta[0].item(), 2) == -4.01
    assert round(delta[1].item(), 2) == -1.30
    assert round(delta[-1].item(), 2) == 0.46
    assert round(m[-1].item(), 3) == 0.315
    assert round(m[0].item(), 3) == 1.0 and round(m[1].item(), 3) == 0.997
    loss = ECMLoss(counts)
    torch.testing.assert_close(loss.margins, delta.float())
    torch.testing.assert_close(loss.weights, m.float())


def test_loss_matches_naive():
    counts = [5, 40, 300, 1]
    g = torch.Generator().manual_seed(0)
    z = (torch.randn(25, 5, generator=g, dtype=D) * 2 - 1).requires_grad_()
    gt = torch.randint(0, 5, (25,), generator=g)
    loss = ECMLoss(counts, bg_fg_ratio=3.0)(z, gt)
    ref = naive_ecm(z, gt, counts, 3.0)
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-7)  # buffers are float32
    (g1,) = torch.autograd.grad(loss, z)
    (g2,) = torch.autograd.grad(ref, z)
    torch.testing.assert_close(g1, g2, rtol=1e-6, atol=1e-8)


def test_gradcheck():
    m = ECMLoss([4, 9, 1], bg_fg_ratio=2.0)
    g = torch.Generator().manual_seed(1)
    z = (torch.randn(6, 4, generator=g, dtype=D) * 2).requires_grad_()
    gt = torch.tensor([0, 1, 2, 3, 3, 3])
    assert torch.autograd.gradcheck(lambda x: m(x, gt), (z,))


def test_zero_count_class_finite():
    d0, m0 = ecm_margins_and_weights([0, 5, 7])
    d1, m1 = ecm_margins_and_weights([1, 5, 7])
    assert torch.isfinite(d0).all() and torch.isfinite(m0).all()
    torch.testing.assert_close(d0, d1)  # clamped to 1
    z = torch.tensor([[80.0, -80.0, 0.0, 3.0], [-80.0, 80.0, -80.0, 80.0]], requires_grad=True)
    loss = ECMLoss([0, 5, 7])(z, torch.tensor([0, 3]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


def test_extreme_logits_float32():
    m = ECMLoss([1, 10, 1000])
    z64 = torch.linspace(-80, 80, 40, dtype=D).reshape(10, 4)
    gt = torch.tensor([0, 1, 2, 3, 3, 0, 1, 2, 3, 3])
    z32 = z64.float().requires_grad_()
    l32 = m(z32, gt)
    l32.backward()
    z64.requires_grad_()
    l64 = m(z64, gt)
    l64.backward()
    assert torch.isfinite(l32) and torch.isfinite(z32.grad).all()
    torch.testing.assert_close(l32.double(), l64, rtol=1e-5, atol=0)
    torch.testing.assert_close(z32.grad.double(), z64.grad, rtol=1e-5, atol=1e-7)


def test_measured_ratio_freezes():
    counts = [10, 20, 30]
    C = 3
    m = ECMLoss(counts, bg_fg_ratio=6.3313, measure_iters=3).train()
    const_margins = m.margins.clone()
    z = torch.zeros(8, C + 1)
    batches = [
        torch.tensor([C, C, C, 0, 1, C, C, 2]),  # 5 bg / 3 fg
        torch.tensor([C, 0, 0, 0, 1, C, 2, 2]),  # 2 / 6
        torch.tensor([C, C, C, C, C, C, C, 1]),
    ]  # 7 / 1
    for i, gt in enumerate(batches):
        m(z, gt)
        if i < 2:
            assert torch.equal(m.margins, const_margins) and m.bg_fg_ratio.item() == 6.3313
    assert int(m.measured_iters) == 3 and int(m.measured_bg) == 14 and int(m.measured_fg) == 10
    assert m.bg_fg_ratio.item() == pytest.approx(14 / 10)
    d, w = ecm_margins_and_weights(counts, 1.4)
    torch.testing.assert_close(m.margins, d.float())
    torch.testing.assert_close(m.weights, w.float())
    frozen = {k: v.clone() for k, v in m.state_dict().items()}
    m(z, torch.full((8,), C))  # after K calls nothing changes
    for k, v in m.state_dict().items():
        assert torch.equal(v, frozen[k]), k


def test_measurement_eval_and_resume():
    C = 2
    z = torch.zeros(4, C + 1)
    gts = [torch.tensor([C, C, C, 0]), torch.tensor([C, 1, 0, 0]), torch.tensor([C, C, 1, C])]
    m = ECMLoss([3, 4], measure_iters=2).eval()
    m(z, gts[0])
    assert int(m.measured_iters) == 0  # eval calls do not count
    full = ECMLoss([3, 4], measure_iters=2).train()
    for gt in gts:
        full(z, gt)
    a = ECMLoss([3, 4], measure_iters=2).train()
    a(z, gts[0])
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = ECMLoss([3, 4], measure_iters=2).train()
    b.load_state_dict(torch.load(buf))
    for gt in gts[1:]:
        b(z, gt)
    for k, v in full.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    assert full.bg_fg_ratio.item() == pytest.approx(4 / 4)


def test_empty_batch():
    m = ECMLoss([1, 2], measure_iters=1).train()
    z = torch.zeros(0, 3, requires_grad=True)
    loss = m(z, torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(m.margins).all()


def test_inference_scores_plain_sigmoid():
    z = torch.tensor([[1.0, -2.0, 0.5]])
    s = objectness_scores(z)
    p = torch.sigmoid(z)
    torch.testing.assert_close(
        s, torch.stack([p[0, 0] * (1 - p[0, 2]), p[0, 1] * (1 - p[0, 2]), p[0, 2]])[None]
    )


def test_focal_variant():
    counts = [2, 50, 400]
    m = ECMFocalLoss(counts)
    n = torch.tensor(counts, dtype=D)
    wp, wn = supplement_weights(n, n.sum() - n)  # no background count
    torch.testing.assert_close(m.margins, torch.log(wp / wn).float())
    g = torch.Generator().manual_seed(3)
    z = (torch.randn(12, 3, generator=g, dtype=D) * 2).requires_grad_()
    t = torch.zeros(12, 3, dtype=D)
    t[torch.arange(6), torch.tensor([0, 1, 2, 2, 1, 0])] = 1  # rows 6.. are background (all zero)
    loss = m(z, t)
    s = wp * torch.exp(z) / (wp * torch.exp(z) + wn * torch.exp(-z))
    a = (n.sum() - n) / n
    mc = a * torch.log((1 + a) / a)
    p_t = s * t + (1 - s) * (1 - t)
    ref = (mc * (0.25 * t + 0.75 * (1 - t)) * (1 - p_t) ** 2 * -torch.log(p_t)).sum()
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-8)
    (g1,) = torch.autograd.grad(loss, z)
    (g2,) = torch.autograd.grad(ref, z)
    torch.testing.assert_close(g1, g2, rtol=1e-6, atol=1e-8)
    big = torch.tensor([[80.0, -80.0, 80.0]], requires_grad=True)
    lb = m(big, torch.tensor([[1.0, 0.0, 0.0]]))
    lb.backward()
    assert torch.isfinite(lb) and torch.isfinite(big.grad).all()


def test_dense_test_score_options():
    """MODEL.LT.ECM.DENSE_TEST_SCORE: "z" is sigma(z); "trained" is sigma(2z + delta) with the
    one-stage margins (hand formula), on (M, C) logits and on (N, C, H, W) heat maps; a bad value is
    refused with the key's name."""
    from lt_detectron.losses import ECMDenseLoss

    counts = [1, 20, 500]
    n = torch.tensor(counts, dtype=D)
    delta = 0.25 * torch.log(n / (n.sum() - n))  # one-stage: n_c^- = sum n - n_c
    z = torch.tensor([[0.3, -1.0, 2.0], [-4.0, 0.0, -2.5]])
    plain = ECMDenseLoss(counts)
    torch.testing.assert_close(plain.predict_probs(z), torch.sigmoid(z))
    trained = ECMDenseLoss(counts, test_score="trained")
    ref = torch.sigmoid(2 * z.double() + delta).float()
    torch.testing.assert_close(trained.predict_probs(z), ref)
    heat = z.t().reshape(1, 3, 2, 1)  # classes on dim 1
    torch.testing.assert_close(trained.predict_probs(heat), ref.t().reshape(1, 3, 2, 1))
    # the rare class's background scores higher under sigma(z) than under the trained probability
    bg = torch.full((1, 3), -3.0)
    assert trained.predict_probs(bg)[0, 0] < plain.predict_probs(bg)[0, 0]
    with pytest.raises(ValueError, match="DENSE_TEST_SCORE"):
        ECMDenseLoss(counts, test_score="sigmoid")
