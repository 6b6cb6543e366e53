"""EFL (Equalized Focal Loss): parity with an independent transcription of the authors' code (loss, gradient
and statistics over several steps), hand-checked values, the heat-map extension, state handling, two ranks."""

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from lt_detectron.losses import EqualizedFocalLoss, sigmoid_focal_loss
from lt_detectron.losses import DENSE_LOSS_REGISTRY, build_dense_loss
from lt_detectron.utils.testing import lt_cfg
from tests._data import ROOT

D = torch.float64


# ----------------------------------------------------------------------------- independent reference
class AuthorsEFL:
    """Plain-torch rewrite of the authors' ``EqualizedFocalLoss`` and its ``GradientCollector`` backward hook
    (United-Perception). Their layout has the background at index 0 (labels 0..C, ``expand_label`` drops
    column 0); :meth:`loss` maps our labels (background C) to theirs. Buffers are float32, as theirs."""

    def __init__(self, C, focal_gamma=2.0, focal_alpha=0.25, scale_factor=8.0):
        self.C, self.fg, self.fa, self.s = C, focal_gamma, focal_alpha, scale_factor
        self.pos_grad = torch.zeros(C)
        self.neg_grad = torch.zeros(C)
        self.pos_neg = torch.ones(C)

    def loss(self, inp, labels):
        target = (labels + 1) % (self.C + 1)  # theirs: 0 = background, class j -> j + 1
        n_i, n_c = inp.shape
        expand = inp.new_zeros(n_i, n_c + 1)
        expand[torch.arange(n_i), target] = 1
        self.cache_target = expand[:, 1:]
        t = self.cache_target
        pred = torch.sigmoid(inp)
        pred_t = pred * t + (1 - pred) * (1 - t)
        dy_gamma = self.fg + self.s * (1 - self.pos_neg)
        ff = dy_gamma.view(1, -1).expand(n_i, n_c)
        wf = ff / self.fg
        cls_loss = -torch.log(pred_t) * torch.pow(1 - pred_t, ff) * wf
        if self.fa >= 0:
            cls_loss = (self.fa * t + (1 - self.fa) * (1 - t)) * cls_loss
        return cls_loss.sum()

    def increments(self, grad):
        """What the hook sums from d(final loss)/d(logits): |grad| over positive / negative entries."""
        g = grad.abs()
        return (g * self.cache_target).sum(0), (g * (1 - self.cache_target)).sum(0)

    def apply(self, pos, neg):  # after their allreduce
        self.pos_grad += pos
        self.neg_grad += neg
        self.pos_neg = torch.clamp(self.pos_grad / (self.neg_grad + 1e-10), min=0, max=1)

    def collect_grad(self, grad):
        self.apply(*self.increments(grad))


def naive_heatmap_efl(z, heat, pos_neg, alpha=2.0, beta=4.0, s=8.0):
    """CenterNet's penalty-reduced focal loss with EFL's per-class exponent alpha + s (1 - g) and weight."""
    gamma = (alpha + s * (1 - pos_neg.to(z.dtype))).view(1, -1, 1, 1)
    w = gamma / alpha
    p = torch.sigmoid(z)
    pos = heat == 1
    pos_loss = -torch.log(p) * (1 - p) ** gamma * w
    neg_loss = -torch.log(1 - p) * p**gamma * (1 - heat) ** beta * w
    return torch.where(pos, pos_loss, neg_loss).sum()


def _batch(seed, M, C, fg=0.3, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(M, C, generator=g, dtype=D) * scale - 1.0
    labels = torch.randint(0, C, (M,), generator=g)
    labels[torch.rand(M, generator=g) > fg] = C
    return z, labels


def _state(m):
    return {k: v.clone() for k, v in m.stats.state_dict().items()}


# ----------------------------------------------------------------------------- parity with the authors
@pytest.mark.parametrize("alpha", [0.25, -1.0])
def test_parity_with_authors_over_steps(alpha):
    C = 6
    batches = [
        _batch(1, 64, C),
        _batch(2, 48, C),
        (_batch(3, 40, C)[0], torch.full((40,), C)),  # all background
        (torch.zeros(0, C, dtype=D), torch.zeros(0, dtype=torch.long)),  # empty
        _batch(4, 80, C, fg=0.6),
        _batch(5, 30, C),
    ]
    ours = EqualizedFocalLoss(C, focal_alpha=alpha).train()
    ref = AuthorsEFL(C, focal_alpha=alpha)
    for step, (z, labels) in enumerate(batches):
        normalizer = max(
            1.0, float((labels < C).sum())
        )  # the detector's normaliser (number of positives)
        z1 = z.clone().requires_grad_(True)
        loss = ours(z1, labels) / normalizer
        loss.backward()  # updates the statistics: the next step's weights
        z2 = z.clone().requires_grad_(True)
        z2.register_hook(ref.collect_grad)  # the authors' hook on the logits
        ref_loss = ref.loss(z2, labels) / normalizer
        ref_loss.backward()
        torch.testing.assert_close(
            loss.detach(), ref_loss.detach(), rtol=1e-5, atol=1e-12, msg="loss, step %d" % step
        )
        torch.testing.assert_close(
            z1.grad, z2.grad, rtol=1e-5, atol=1e-12, msg="grad, step %d" % step
        )
        torch.testing.assert_close(ours.stats.pos_grad, ref.pos_grad, rtol=1e-5, atol=1e-10)
        torch.testing.assert_close(ours.stats.neg_grad, ref.neg_grad, rtol=1e-5, atol=1e-10)
        torch.testing.assert_close(ours.stats.pos_neg, ref.pos_neg, rtol=1e-5, atol=1e-7)
    # the statistics moved away from the start: rare-positive classes got g < 1, so gamma_j > gamma_b
    assert (ours.stats.pos_neg < 0.5).all() and (ours.class_factors()[0] > 2.0 + 8 * 0.5).all()


def test_balanced_statistics_is_focal_loss_with_gamma_b():
    C = 5
    z, labels = _batch(7, 50, C)
    m = EqualizedFocalLoss(C, focal_gamma=2.0).train()  # g = 1 at the start
    z1 = z.clone().requires_grad_(True)
    loss = m(z1, labels)
    loss.backward()
    z2 = z.clone().requires_grad_(True)
    ref = sigmoid_focal_loss(z2, F.one_hot(labels, C + 1)[:, :C].to(D), 0.25, 2.0, reduction="sum")
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=0)
    torch.testing.assert_close(z1.grad, z2.grad, rtol=1e-10, atol=1e-14)


def test_hand_checked_tiny_case():
    ln2 = math.log(2.0)
    m = EqualizedFocalLoss(2, focal_alpha=0.25, focal_gamma=2.0, scale_factor=8.0).train()
    z, labels = torch.zeros(1, 2, dtype=D), torch.tensor([0])
    # g = (1, 1): focal loss with gamma 2 at p = 1/2: (alpha + (1 - alpha)) * 0.25 * ln 2
    assert m.eval()(z, labels).item() == pytest.approx(0.25 * ln2, rel=1e-12)
    # g = (0.5, 0): gamma = (6, 10), w = (3, 5)
    m.stats.pos_neg.copy_(torch.tensor([0.5, 0.0]))
    gamma, w = m.class_factors()
    assert gamma.tolist() == [6.0, 10.0] and w.tolist() == [3.0, 5.0]
    expected = 0.25 * 3 * 0.5**6 * ln2 + 0.75 * 5 * 0.5**10 * ln2
    z1 = z.clone().requires_grad_(True)
    loss = m.train()(z1, labels)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    loss.backward()
    # d/dz of a w (1 - p_t)^gamma (-log p_t) at z = 0: -/+ a w 0.5^gamma (gamma 0.5 ln 2 + 0.5)
    g_pos = -0.25 * 3 * 0.5**6 * (6 * 0.5 * ln2 + 0.5)
    g_neg = 0.75 * 5 * 0.5**10 * (10 * 0.5 * ln2 + 0.5)
    torch.testing.assert_close(z1.grad, torch.tensor([[g_pos, g_neg]], dtype=D), rtol=1e-12, atol=0)
    # statistics of this step: |grad| of class 0 is positive, of class 1 negative; g = clamp(pos / (neg + 1e-10), max=1)
    torch.testing.assert_close(m.stats.pos_grad, torch.tensor([-g_pos, 0.0], dtype=torch.float32))
    torch.testing.assert_close(m.stats.neg_grad, torch.tensor([0.0, g_neg], dtype=torch.float32))
    assert m.stats.pos_neg.tolist() == [1.0, 0.0]


def test_gradcheck_both_forms():
    C = 3
    m = EqualizedFocalLoss(C, focal_alpha=0.25).eval()
    m.stats.pos_neg.copy_(torch.tensor([0.2, 0.7, 1.0]))
    z, labels = _batch(8, 12, C)
    assert torch.autograd.gradcheck(lambda x: m(x, labels), (z.requires_grad_(True),))
    heat = torch.rand(2, C, 4, 4, dtype=D, generator=torch.Generator().manual_seed(0)) * 0.9
    heat[0, 1, 2, 2] = heat[1, 0, 0, 3] = 1.0
    x = torch.randn(2, C, 4, 4, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: m.heatmap(t, heat, alpha=2.0, beta=4.0), (x,))


# ----------------------------------------------------------------------------- heat-map extension
def test_heatmap_parity_with_naive_over_steps():
    C, alpha, beta = 4, 2.0, 4.0
    m = EqualizedFocalLoss(C, focal_gamma=2.0).train()
    ref_pos_neg = torch.ones(C)
    ref_pos = torch.zeros(C, dtype=D)
    ref_neg = torch.zeros(C, dtype=D)
    gen = torch.Generator().manual_seed(3)
    for step in range(3):
        z = torch.randn(2, C, 6, 6, generator=gen, dtype=D) * 2 - 2
        heat = torch.rand(2, C, 6, 6, generator=gen, dtype=D) * 0.95
        heat[0, step, 1, 2] = heat[1, (step + 1) % C, 4, 4] = heat[1, 3, 0, 0] = 1.0
        n = 3.0  # CenterNet divides by the number of objects
        z1 = z.clone().requires_grad_(True)
        loss = m.heatmap(z1, heat, alpha=alpha, beta=beta) / n
        loss.backward()
        z2 = z.clone().requires_grad_(True)
        ref = naive_heatmap_efl(z2, heat, ref_pos_neg, alpha, beta) / n
        ref.backward()
        torch.testing.assert_close(loss.detach(), ref.detach(), rtol=1e-6, atol=0)
        torch.testing.assert_close(z1.grad, z2.grad, rtol=1e-6, atol=1e-14)
        g, pos = z2.grad.abs(), heat == 1
        ref_pos += torch.where(pos, g, 0 * g).sum((0, 2, 3))
        ref_neg += torch.where(pos, 0 * g, g).sum((0, 2, 3))
        ref_pos_neg = (ref_pos / (ref_neg + 1e-10)).clamp(0, 1).float()
        torch.testing.assert_close(m.stats.pos_grad.double(), ref_pos, rtol=1e-5, atol=1e-10)
        torch.testing.assert_close(m.stats.neg_grad.double(), ref_neg, rtol=1e-5, atol=1e-10)
    assert (m.stats.pos_neg <= 1).all() and (m.stats.pos_neg < 1).any()


def test_heatmap_with_balanced_statistics_is_centernet_loss():
    C = 3
    m = EqualizedFocalLoss(C).eval()
    z = torch.randn(1, C, 5, 5, dtype=D)
    heat = torch.rand(1, C, 5, 5, dtype=D) * 0.9
    heat[0, 0, 2, 2] = 1.0
    p = torch.sigmoid(z)
    pos = heat.eq(1).to(D)
    centernet = (
        -torch.log(p) * (1 - p) ** 2 * pos - torch.log(1 - p) * p**2 * (1 - heat) ** 4 * (1 - pos)
    ).sum()
    torch.testing.assert_close(m.heatmap(z, heat, alpha=2.0, beta=4.0), centernet)


# ----------------------------------------------------------------------------- state handling
def test_state_dict_round_trip():
    C = 4
    m = EqualizedFocalLoss(C).train()
    for s in (1, 2):
        z, labels = _batch(s, 40, C)
        m(z.requires_grad_(True), labels).backward()
    sd = m.state_dict()
    assert set(sd) == {"stats.pos_grad", "stats.neg_grad", "stats.pos_neg"}
    assert all(v.dtype == torch.float32 for v in sd.values())
    m2 = EqualizedFocalLoss(C)
    m2.load_state_dict(sd)
    z, labels = _batch(9, 30, C)
    assert torch.equal(m.eval()(z, labels), m2.eval()(z, labels))


def test_nonfinite_batch_leaves_state_unchanged(logger_warnings):
    C = 4
    m = EqualizedFocalLoss(C).train()
    z, labels = _batch(1, 40, C)
    m(z.clone().requires_grad_(True), labels).backward()
    before = _state(m)
    bad = z.clone()
    bad[3, 1] = float("nan")
    with logger_warnings("lt_detectron.losses.grad_stats") as rec:
        loss = m(bad.requires_grad_(True), labels)
        loss.backward()
    assert not torch.isfinite(loss)
    for k, v in _state(m).items():
        assert torch.equal(v, before[k]), k
    assert m.stats.num_nonfinite_skips == 1
    assert (
        len(rec.records) == 1
        and "EFL statistics" in rec.records[0]
        and "non-finite" in rec.records[0]
    )
    # the next good batch updates as if the bad one never happened
    ref = EqualizedFocalLoss(C).train()
    for zz in (z, _batch(2, 40, C)[0]):
        ref(zz.clone().requires_grad_(True), labels).backward()
    m(_batch(2, 40, C)[0].requires_grad_(True), labels).backward()
    for k, v in _state(ref).items():
        assert torch.equal(v, _state(m)[k]), k


def test_no_update_in_eval_without_grad_or_for_an_empty_first_batch():
    C = 3
    m = EqualizedFocalLoss(C).train()
    start = _state(m)
    z, labels = _batch(1, 20, C)
    m(
        torch.zeros(0, C, requires_grad=True), torch.zeros(0, dtype=torch.long)
    ).backward()  # nothing observed
    m(z.clone().requires_grad_(True), labels)  # forward only: the update happens in backward
    with torch.no_grad():
        m(z, labels)
    m.eval()(z.clone().requires_grad_(True), labels).backward()
    for k, v in _state(m).items():
        assert torch.equal(v, start[k]), k
    assert m.stats.pos_neg.eq(1).all()


def test_half_precision_logits():
    C = 4
    m = EqualizedFocalLoss(C).train()
    z, labels = _batch(1, 32, C)
    zb = z.to(torch.bfloat16).requires_grad_(True)
    loss = m(zb, labels)
    loss.backward()
    assert loss.dtype == torch.float32 and zb.grad.dtype == torch.bfloat16
    ref = EqualizedFocalLoss(C).eval()(zb.detach().float(), labels)
    torch.testing.assert_close(loss, ref)


def test_bad_input_and_config_errors():
    m = EqualizedFocalLoss(3)
    with pytest.raises(ValueError, match=r"\(M, 3\)"):
        m(torch.zeros(4, 4), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\]"):
        m(torch.zeros(2, 3), torch.tensor([0, -1]))
    with pytest.raises(ValueError, match="labels"):
        m(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="heat"):
        m.heatmap(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 3))
    with pytest.raises(ValueError, match="FOCAL_LOSS_GAMMA"):
        EqualizedFocalLoss(3, focal_gamma=0.0)
    with pytest.raises(ValueError, match="MODEL.LT.EFL.SCALE_FACTOR"):
        EqualizedFocalLoss(3, scale_factor=-1.0)


def test_built_from_config():
    cfg = lt_cfg()
    assert cfg.MODEL.LT.EFL.SCALE_FACTOR == 8.0
    cfg.MODEL.LT.DENSE_LOSS = "efl"
    cfg.MODEL.LT.EFL.SCALE_FACTOR = 4.0
    loss = build_dense_loss(cfg, 7, focal_alpha=0.5, focal_gamma=1.5)
    assert DENSE_LOSS_REGISTRY.get("EFL") is EqualizedFocalLoss and isinstance(
        loss, EqualizedFocalLoss
    )
    assert (loss.num_classes, loss.focal_alpha, loss.focal_gamma, loss.scale_factor) == (
        7,
        0.5,
        1.5,
        4.0,
    )
    z = torch.randn(3, 7)
    assert torch.equal(loss.predict_probs(z), torch.sigmoid(z))


# ----------------------------------------------------------------------------- two ranks (gloo)
STEPS = 3


def _rank_batch(rank, step, C):
    return _batch(100 * rank + step, 24 + 8 * rank, C)


def _worker(rank, out_dir, C):
    rendezvous = "file://" + os.path.join(
        out_dir, "rendezvous"
    )  # no TCP port another test could grab
    dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=2)
    torch.set_num_threads(1)
    m = EqualizedFocalLoss(C).train()
    for step in range(STEPS):
        z, labels = _rank_batch(rank, step, C)
        if rank == 1 and step == 1:  # an empty batch on one rank: it still joins the all-reduce
            z, labels = z[:0], labels[:0]
        (m(z.requires_grad_(True), labels) / 4.0).backward()
    torch.save(m.state_dict(), os.path.join(out_dir, "rank%d.pt" % rank))
    dist.destroy_process_group()


@pytest.mark.slow  # multi-process (the marker's definition); ~10 s
def test_two_ranks_end_with_identical_all_reduced_state(tmp_path):
    C = 5
    mp.spawn(_worker, args=(str(tmp_path), C), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / ("rank%d.pt" % r)) for r in (0, 1))
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    # single-process reference: each step, both ranks' increments with the same state, summed, then applied
    ref = AuthorsEFL(C)
    for step in range(STEPS):
        inc = []
        for rank in (0, 1):
            z, labels = _rank_batch(rank, step, C)
            if rank == 1 and step == 1:
                z, labels = z[:0], labels[:0]
            z = z.requires_grad_(True)
            (ref.loss(z, labels) / 4.0).backward()
            inc.append(ref.increments(z.grad))
        ref.apply(inc[0][0] + inc[1][0], inc[0][1] + inc[1][1])
    torch.testing.assert_close(r0["stats.pos_grad"], ref.pos_grad, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(r0["stats.neg_grad"], ref.neg_grad, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(r0["stats.pos_neg"], ref.pos_neg, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- end to end (embedded set)
@pytest.mark.slow
@pytest.mark.parametrize("name", ["retinanet_tiny_efl", "fcos_tiny_efl", "centernet_tiny_efl"])
def test_tiny_detector_trains_with_efl(tmp_path, name):
    from lt_detectron.engine import LTTrainer

    cfg = lt_cfg()
    cfg.merge_from_file(
        os.path.join(
            ROOT,
            "configs",
            "lt_shapes",
            name + ".yaml",
        )
    )
    cfg.merge_from_list(
        [
            "SOLVER.MAX_ITER",
            "2",
            "SOLVER.IMS_PER_BATCH",
            "2",
            "SOLVER.WARMUP_ITERS",
            "1",
            "SOLVER.CHECKPOINT_PERIOD",
            "100",
            "DATALOADER.NUM_WORKERS",
            "0",
            "DATASETS.TEST",
            "()",
            "OUTPUT_DIR",
            str(tmp_path),
        ]
    )
    trainer = LTTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    losses = [m for m in trainer.model.modules() if isinstance(m, EqualizedFocalLoss)]
    assert len(losses) == 1
    stats = losses[0].stats
    # two steps were accumulated: every class saw negatives, the state is finite, g in [0, 1]
    assert (
        (stats.neg_grad > 0).all() and stats.pos_grad.sum() > 0 and stats.num_nonfinite_skips == 0
    )
    assert (
        torch.isfinite(stats.pos_neg).all() and ((stats.pos_neg >= 0) & (stats.pos_neg <= 1)).all()
    )
    assert (stats.pos_neg < 1).any()
    sd = trainer.model.state_dict()
    assert any(k.endswith("cls_loss.stats.pos_neg") for k in sd), [k for k in sd if "cls_loss" in k]
