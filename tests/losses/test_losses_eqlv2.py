"""EQL v2 (ROI and dense) against a naive transcription of the authors' eqlv2.py (docs/methods.md#eql-v2)."""

import io
import math
import os

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from lt_detectron.losses import EQLv2FocalLoss, EQLv2Loss, eqlv2_map, objectness_scores

D = torch.float64


class NaiveEQLv2:
    """Plain-tensor transcription of the authors' EQLv2 (float64 state, one-hot target, no fusion)."""

    def __init__(self, C, gamma=12.0, mu=0.8, alpha=4.0):
        self.C, self.gamma, self.mu, self.alpha = C, gamma, mu, alpha
        self.pos_grad = torch.zeros(C, dtype=D)
        self.neg_grad = torch.zeros(C, dtype=D)
        self.pos_neg = torch.ones(C, dtype=D) * 100

    def f(self, x):
        return 1 / (1 + torch.exp(-self.gamma * (x - self.mu)))

    def weights(self, n_i):
        neg_w = torch.cat([self.f(self.pos_neg), torch.ones(1, dtype=D)])
        pos_w = 1 + self.alpha * (1 - neg_w)
        return pos_w.view(1, -1).expand(n_i, -1), neg_w.view(1, -1).expand(n_i, -1)

    def __call__(self, z, gt, update=True):
        n_i, n_c = z.shape
        target = z.new_zeros(n_i, n_c)
        target[torch.arange(n_i), gt] = 1
        pos_w, neg_w = self.weights(n_i)
        weight = pos_w * target + neg_w * (1 - target)
        loss = (
            torch.sum(F.binary_cross_entropy_with_logits(z, target, reduction="none") * weight)
            / n_i
        )
        if update:
            prob = torch.sigmoid(z.detach().double())
            grad = torch.abs(target * (prob - 1) + (1 - target) * prob)
            self.pos_grad += torch.sum(grad * target * weight, dim=0)[:-1]
            self.neg_grad += torch.sum(grad * (1 - target) * weight, dim=0)[:-1]
            self.pos_neg = self.pos_grad / (self.neg_grad + 1e-10)
        return loss


def _batch(g, R, C, fg_frac=0.3, scale=4.0, bias=-3.0):
    z = torch.randn(R, C + 1, generator=g, dtype=D) * scale + bias
    gt = torch.randint(0, C, (R,), generator=g)
    gt[torch.rand(R, generator=g) > fg_frac] = C
    return z, gt


def test_map_reference_values():
    x = torch.tensor([0.0, 0.8, 1.0, 100.0])
    f = eqlv2_map(x, 12.0, 0.8)
    torch.testing.assert_close(f[0], torch.tensor(1 / (1 + math.exp(9.6))))
    assert abs(f[0].item() - 6.8e-5) < 1e-6
    assert f[1].item() == 0.5
    assert abs(f[2].item() - 0.917) < 1e-3
    assert f[3].item() == 1.0


def test_first_iteration_weights_all_one():
    m = EQLv2Loss(5)
    neg_w, pos_w = m.get_weights()
    assert torch.equal(neg_w, torch.ones(6)) and torch.equal(pos_w, torch.ones(6))
    # so the first loss is plain BCE over all C+1 columns / R
    g = torch.Generator().manual_seed(0)
    z, gt = _batch(g, 9, 5)
    y = F.one_hot(gt, 6).to(D)
    ref = F.binary_cross_entropy_with_logits(z, y, reduction="sum") / 9
    torch.testing.assert_close(m(z, gt), ref, rtol=1e-12, atol=0)


def test_matches_naive_over_iterations():
    C = 7
    g = torch.Generator().manual_seed(1)
    m = EQLv2Loss(C).train()
    ref = NaiveEQLv2(C)
    for it in range(6):
        z, gt = _batch(g, 40, C)
        z1 = z.clone().requires_grad_()
        z2 = z.clone().requires_grad_()
        l1 = m(z1, gt)
        l2 = ref(z2, gt)
        # weights come from fp32 buffers in the module, float64 in the reference
        torch.testing.assert_close(l1, l2, rtol=1e-5, atol=1e-7)
        l1.backward()
        l2.backward()
        torch.testing.assert_close(z1.grad, z2.grad, rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(m.pos_grad.double(), ref.pos_grad, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(m.neg_grad.double(), ref.neg_grad, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(m.pos_neg.double(), ref.pos_neg, rtol=1e-4, atol=1e-6)
    # the weights really moved away from 1 (so the comparison above is not vacuous)
    neg_w, pos_w = m.get_weights()
    assert (neg_w[:C] < 0.99).any() and (pos_w[:C] > 1.01).any()
    assert neg_w[C] == 1 and pos_w[C] == 1


def test_unseen_class_weights():
    """A class never positive has g = 0 after one update: r = f(0) ~ 6.8e-5, q ~ 5."""
    C = 3
    m = EQLv2Loss(C).train()
    z = torch.zeros(4, C + 1)
    gt = torch.tensor([0, 0, C, C])
    m(z, gt)
    neg_w, pos_w = m.get_weights()
    assert abs(neg_w[1].item() - 6.8e-5) < 1e-6 and abs(pos_w[1].item() - 5.0) < 1e-3
    # class 0: pos = 2 * 0.5, neg = 2 * 0.5 -> g = 1
    assert abs(m.pos_neg[0].item() - 1.0) < 1e-6


def test_gradcheck_float64():
    C = 4
    m = EQLv2Loss(C)
    m.pos_neg.copy_(torch.tensor([0.0, 0.5, 0.8, 3.0]))  # non-trivial weights
    m.eval()
    g = torch.Generator().manual_seed(2)
    z, gt = _batch(g, 6, C)
    z.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: m(x, gt), (z,))


def test_eval_mode_does_not_update():
    m = EQLv2Loss(3).eval()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    g = torch.Generator().manual_seed(3)
    z, gt = _batch(g, 10, 3)
    m(z, gt)
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k
    m.train()
    m(z, gt)
    assert not torch.equal(m.pos_neg, before["pos_neg"])


def test_buffers_persistent_and_fp32():
    m = EQLv2Loss(3)
    sd = m.state_dict()
    assert set(sd) == {"pos_grad", "neg_grad", "pos_neg"}
    assert all(v.dtype == torch.float32 and v.shape == (3,) for v in sd.values())


def test_state_dict_resume_exact():
    C = 5
    g = torch.Generator().manual_seed(4)
    batches = [_batch(g, 30, C) for _ in range(7)]
    full = EQLv2Loss(C).train()
    losses_full = [full(z, gt) for z, gt in batches]
    a = EQLv2Loss(C).train()
    for z, gt in batches[:4]:
        a(z, gt)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = EQLv2Loss(C).train()
    b.load_state_dict(torch.load(buf))
    losses_b = [b(z, gt) for z, gt in batches[4:]]
    for l1, l2 in zip(losses_full[4:], losses_b):
        assert torch.equal(l1, l2)
    for k in ("pos_grad", "neg_grad", "pos_neg"):
        assert torch.equal(getattr(full, k), getattr(b, k))


def test_empty_batch_training():
    m = EQLv2Loss(3).train()
    z = torch.zeros(0, 4, requires_grad=True)
    loss = m(z, torch.zeros(0, dtype=torch.long))
    assert loss.item() == 0 and loss.requires_grad
    loss.backward()
    assert torch.all(m.pos_neg == 100) and torch.all(m.neg_grad == 0)


def test_objectness_scores():
    z = torch.tensor([[0.0, 2.0, -1.0], [80.0, -80.0, 80.0]])
    s = objectness_scores(z)
    p = torch.sigmoid(z)
    ref = torch.cat([p[:, :2] * (1 - p[:, 2:]), p[:, 2:]], 1)
    torch.testing.assert_close(s, ref)
    assert s.shape == (2, 3) and torch.isfinite(s).all()


# ------------------------------------------------------------------------------------------------ dense
def naive_dense(state, z, gt, C, focal_gamma=2.0, focal_alpha=0.25):
    y = torch.zeros(z.shape[0], C + 1, dtype=D)
    y[torch.arange(z.shape[0]), gt] = 1
    y = y[:, :C]
    r = state.f(state.pos_neg)
    q = 1 + state.alpha * (1 - r)
    w = y * q + (1 - y) * r
    p = torch.sigmoid(z)
    ce = F.binary_cross_entropy_with_logits(z, y, reduction="none")
    p_t = p * y + (1 - p) * (1 - y)
    a_t = focal_alpha * y + (1 - focal_alpha) * (1 - y)
    loss = (w * a_t * ce * (1 - p_t) ** focal_gamma).sum()
    s = torch.sigmoid(z.detach())
    grad = torch.abs(y * (s - 1) + (1 - y) * s)
    state.pos_grad += (grad * y * w).sum(0)
    state.neg_grad += (grad * (1 - y) * w).sum(0)
    state.pos_neg = state.pos_grad / (state.neg_grad + 1e-10)
    return loss


def test_dense_matches_naive():
    C = 4
    g = torch.Generator().manual_seed(5)
    m = EQLv2FocalLoss(C).train()
    ref = NaiveEQLv2(C)
    for _ in range(4):
        z = torch.randn(50, C, generator=g, dtype=D) * 3 - 2
        gt = torch.randint(0, C + 1, (50,), generator=g)
        z1 = z.clone().requires_grad_()
        z2 = z.clone().requires_grad_()
        l1 = m(z1, gt)
        l2 = naive_dense(ref, z2, gt, C)
        torch.testing.assert_close(l1, l2, rtol=1e-5, atol=1e-8)
        l1.backward()
        l2.backward()
        torch.testing.assert_close(z1.grad, z2.grad, rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(m.pos_neg.double(), ref.pos_neg, rtol=1e-4, atol=1e-6)
    assert (m.get_weights if hasattr(m, "get_weights") else m.class_weights)()[0].min() < 0.99


# ------------------------------------------------------------------------------------------ distributed
def _dist_worker(rank, world, init_file, out_dir, C, batches):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        m = EQLv2Loss(C).train()
        for z, gt in batches:
            half = z.shape[0] // world
            sl = slice(rank * half, (rank + 1) * half)
            m(z[sl], gt[sl])
        torch.save(m.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_distributed_stats_two_ranks(tmp_path):
    """2 gloo ranks on halves of each batch == one process on the whole batch.

    Logits are float64, so the per-rank increments are exact to ~1e-16 before the fp32 accumulation;
    the ranks must agree bitwise (same all-reduced increments); vs the single process the only
    difference is the float64 summation order (split at the rank boundary), hence rtol 1e-6.
    """
    C = 6
    g = torch.Generator().manual_seed(6)
    batches = [_batch(g, 64, C) for _ in range(4)]
    mp.spawn(
        _dist_worker,
        args=(2, str(tmp_path / "init"), str(tmp_path), C, batches),
        nprocs=2,
        join=True,
    )
    s0 = torch.load(tmp_path / "rank0.pt")
    s1 = torch.load(tmp_path / "rank1.pt")
    single = EQLv2Loss(C).train()
    for z, gt in batches:
        single(z, gt)
    for k in ("pos_grad", "neg_grad", "pos_neg"):
        assert torch.equal(s0[k], s1[k]), k
        torch.testing.assert_close(s0[k], getattr(single, k), rtol=1e-6, atol=0)
    # and not equal to what one rank alone would have accumulated (the all-reduce matters)
    alone = EQLv2Loss(C).train()
    for z, gt in batches:
        alone(z[:32], gt[:32])
    assert not torch.allclose(alone.pos_grad, s0["pos_grad"])
