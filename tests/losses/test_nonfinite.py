"""Stateful losses drop a non-finite batch's statistics (EQL v2 ROI / focal / heat-map, ECM's measured
ratio), warn at a limited rate, and decide identically on every rank."""

import os

import pytest
import torch
import torch.multiprocessing as mp

from lt_detectron.losses import ECMLoss, EQLv2FocalLoss, EQLv2Loss, ecm_margins_and_weights

D = torch.float64
EQL_KEYS = ("pos_grad", "neg_grad", "pos_neg")


def _batch(seed, R, C, fg_frac=0.3):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(R, C + 1, generator=g, dtype=D) * 4.0 - 3.0
    gt = torch.randint(0, C, (R,), generator=g)
    gt[torch.rand(R, generator=g) > fg_frac] = C
    return z, gt


def _poison(z, value=float("nan"), row=3, col=1):
    z = z.clone()
    z[row, col] = value
    return z


def _state(m, keys):
    return {k: getattr(m, k).clone() for k in keys}


def _naive_eqlv2_stats(batches, C, gamma=12.0, mu=0.8, alpha=4.0):
    """The authors' update in float64, written out independently (no guard): returns pos_grad, neg_grad, pos_neg."""
    pos_grad = torch.zeros(C, dtype=D)
    neg_grad = torch.zeros(C, dtype=D)
    pos_neg = torch.full((C,), 100.0, dtype=D)
    for z, gt in batches:
        y = torch.zeros_like(z)
        y[torch.arange(z.shape[0]), gt] = 1
        r = torch.cat([1 / (1 + torch.exp(-gamma * (pos_neg - mu))), torch.ones(1, dtype=D)])
        q = 1 + alpha * (1 - r)
        q[-1] = 1.0
        w = y * q + (1 - y) * r
        p = torch.sigmoid(z)
        grad = (y * (p - 1) + (1 - y) * p).abs()
        pos_grad = pos_grad + (grad * y * w).sum(0)[:-1]
        neg_grad = neg_grad + (grad * (1 - y) * w).sum(0)[:-1]
        pos_neg = pos_grad / (neg_grad + 1e-10)
    return pos_grad, neg_grad, pos_neg


def test_eqlv2_nan_batch_is_skipped_with_a_warning(logger_warnings):
    C = 5
    good = [_batch(1, 48, C), _batch(2, 48, C)]
    bad_z, bad_gt = _batch(3, 48, C)
    # what an unguarded update would do: the poisoned class's ratio is NaN forever
    assert torch.isnan(_naive_eqlv2_stats([(_poison(bad_z), bad_gt)] + good, C)[2][1])

    m = EQLv2Loss(C).train()
    with logger_warnings("lt_detectron.losses.eqlv2") as rec:
        m(_poison(bad_z), bad_gt)  # the loss of this batch may be NaN; the state must not be
        assert _state(m, EQL_KEYS)["pos_neg"].eq(100.0).all() and m.pos_grad.eq(0).all()
        losses = [m(z, gt) for z, gt in good]
    ref = EQLv2Loss(C).train()
    ref_losses = [ref(z, gt) for z, gt in good]
    for k in EQL_KEYS:
        assert torch.equal(getattr(m, k), getattr(ref, k)), k
    for a, b in zip(losses, ref_losses):
        assert torch.isfinite(a) and torch.equal(a, b)
    # and the state is the authors' update over the good batches only
    for k, v in zip(EQL_KEYS, _naive_eqlv2_stats(good, C)):
        torch.testing.assert_close(getattr(m, k).double(), v, rtol=1e-5, atol=1e-6)
    assert m.num_nonfinite_skips == 1 and ref.num_nonfinite_skips == 0
    assert len(rec.records) == 1
    assert (
        "EQLv2Loss" in rec.records[0]
        and "non-finite" in rec.records[0]
        and "pos_grad" in rec.records[0]
    )


def test_eqlv2_nan_run_midway_and_rate_limited_warning(logger_warnings):
    C = 4
    b1, b2, b3 = (_batch(s, 32, C) for s in (11, 12, 13))
    m = EQLv2Loss(C).train()
    ref = EQLv2Loss(C).train()
    m(*b1)
    ref(*b1)
    with logger_warnings("lt_detectron.losses.eqlv2") as rec:
        for i in range(250):  # a long run of bad steps
            m(_poison(b2[0], row=i % 32, col=i % C), b2[1])
    assert m.num_nonfinite_skips == 250
    assert len(rec.records) == 3  # the 1st, 100th and 200th skip
    assert "200 batch(es)" in rec.records[-1]
    m(*b3)
    ref(*b3)
    for k in EQL_KEYS:
        assert torch.equal(getattr(m, k), getattr(ref, k)), k


def test_eqlv2_infinite_logits_saturate_and_count():
    """+-inf logits give sigma = 1 / 0: finite increments, so the batch counts, as in the authors' code
    (the guard is on the statistics, not on the logits)."""
    C = 3
    z, gt = _batch(14, 24, C)
    z = _poison(_poison(z, float("inf"), row=2, col=0), float("-inf"), row=5, col=2)
    m = EQLv2Loss(C).train()
    m(z, gt)
    assert m.num_nonfinite_skips == 0
    for k, v in zip(EQL_KEYS, _naive_eqlv2_stats([(z, gt)], C)):
        assert torch.isfinite(v).all()
        torch.testing.assert_close(getattr(m, k).double(), v, rtol=1e-5, atol=1e-6)


def test_eqlv2_eval_mode_and_empty_batch_unaffected():
    C = 3
    m = EQLv2Loss(C).train()
    m(torch.zeros(0, C + 1), torch.zeros(0, dtype=torch.long))  # empty: no update, no warning
    assert m.num_nonfinite_skips == 0 and m.pos_neg.eq(100).all()
    m.eval()
    m(_poison(_batch(4, 16, C)[0]), _batch(4, 16, C)[1])  # eval: no statistics at all
    assert m.num_nonfinite_skips == 0 and m.pos_neg.eq(100).all()


def test_dense_eqlv2_focal_nan_batch(logger_warnings):
    C = 4
    g = torch.Generator().manual_seed(5)

    def dense(M):
        z = torch.randn(M, C, generator=g) * 3 - 2
        gt = torch.randint(0, C + 1, (M,), generator=g)
        return z, gt

    good = dense(64)
    bad = dense(64)
    m = EQLv2FocalLoss(C).train()
    ref = EQLv2FocalLoss(C).train()
    with logger_warnings("lt_detectron.losses.eqlv2") as rec:
        m(_poison(bad[0], col=2), bad[1])
    m(*good)
    ref(*good)
    for k in EQL_KEYS:
        assert torch.equal(getattr(m, k), getattr(ref, k)), k
    assert torch.isfinite(m.pos_neg).all() and m.pos_grad.abs().sum() > 0
    assert len(rec.records) == 1 and "EQLv2FocalLoss" in rec.records[0]


def test_heatmap_eqlv2_nan_batch(logger_warnings):
    """CenterNet's heat-map form (EQLv2FocalLoss.heatmap) updates through the same guarded path."""

    C = 3
    g = torch.Generator().manual_seed(7)
    heat = torch.rand(2, C, 6, 6, generator=g) * 0.9
    heat[0, 1, 2, 3] = 1.0
    heat[1, 0, 4, 4] = 1.0
    good = torch.randn(2, C, 6, 6, generator=g) - 2
    bad = good.clone()
    bad[1, 2, 0, 0] = float("nan")
    m = EQLv2FocalLoss(C).train()
    ref = EQLv2FocalLoss(C).train()
    with logger_warnings("lt_detectron.losses.eqlv2") as rec:
        m.heatmap(bad, heat)
    m.heatmap(good, heat)
    ref.heatmap(good, heat)
    for k in EQL_KEYS:
        assert torch.equal(getattr(m, k), getattr(ref, k)), k
    assert torch.isfinite(m.pos_neg).all() and m.pos_grad.sum() > 0
    assert len(rec.records) == 1


def test_ecm_measurement_skips_a_nonfinite_batch(logger_warnings):
    counts = [10, 20, 30]
    C = 3
    z = torch.zeros(8, C + 1)
    b1 = torch.tensor([C, C, C, 0, 1, C, C, 2])  # 5 bg / 3 fg
    b2 = torch.tensor([C, 0, 0, 0, 1, C, 2, 2])  # 2 / 6
    bad_gt = torch.tensor([C, C, C, C, C, C, C, 1])  # 7 / 1, with a NaN logit: not counted
    m = ECMLoss(counts, measure_iters=2).train()
    with logger_warnings("lt_detectron.losses.ecm") as rec:
        m(z, b1)
        m(_poison(z), bad_gt)
        assert (
            int(m.measured_iters) == 1 and m.measuring
        )  # the bad batch did not use up a measuring step
        m(z, b2)
    assert int(m.measured_iters) == 2 and int(m.measured_bg) == 7 and int(m.measured_fg) == 9
    assert m.bg_fg_ratio.item() == 7 / 9
    d, w = ecm_margins_and_weights(counts, 7 / 9)
    torch.testing.assert_close(m.margins, d.float())
    torch.testing.assert_close(m.weights, w.float())
    ref = ECMLoss(counts, measure_iters=2).train()
    ref(z, b1)
    ref(z, b2)
    for k, v in ref.state_dict().items():
        assert torch.equal(m.state_dict()[k], v), k
    assert len(rec.records) == 1 and "ECMLoss" in rec.records[0] and "bg:fg" in rec.records[0]
    # after measuring, a non-finite batch touches nothing (no statistics are collected any more)
    m(_poison(z), b1)
    assert m.num_nonfinite_skips == 1


# ------------------------------------------------------------------------------------------ two ranks
def _dist_worker(rank, world, init_file, out_dir, C, batches, bad_step):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        eql = EQLv2Loss(C).train()
        ecm = ECMLoss([5.0] * C, measure_iters=2).train()
        for step, (z, gt) in enumerate(batches):
            half = z.shape[0] // world
            sl = slice(rank * half, (rank + 1) * half)
            zr, gtr = z[sl], gt[sl]
            if step == bad_step and rank == 1:  # only rank 1 sees the NaN
                zr = _poison(zr)
            eql(zr, gtr)
            ecm(zr, gtr)
        out = {k: getattr(eql, k) for k in EQL_KEYS}
        out.update({"ecm." + k: v for k, v in ecm.state_dict().items()})
        out["skips"] = torch.tensor([eql.num_nonfinite_skips, ecm.num_nonfinite_skips])
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_skip_together(tmp_path):
    """Rank 1 alone gets a NaN logit: both ranks skip that step (EQL v2 and ECM), stay equal, and equal
    one process that saw only the good batches."""
    C = 4
    batches = [_batch(20 + i, 32, C) for i in range(3)]
    mp.spawn(
        _dist_worker,
        args=(2, str(tmp_path / "init"), str(tmp_path), C, batches, 1),
        nprocs=2,
        join=True,
    )
    s0, s1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for k in s0:
        assert torch.equal(s0[k], s1[k]), k
    assert s0["skips"].tolist() == [
        1,
        1,
    ]  # rank 0 saw only finite logits, yet skipped and warned too
    good = [batches[0], batches[2]]
    single_eql = EQLv2Loss(C).train()
    single_ecm = ECMLoss([5.0] * C, measure_iters=2).train()
    for z, gt in good:
        single_eql(z, gt)
        single_ecm(z, gt)
    for k in EQL_KEYS:
        assert torch.isfinite(s0[k]).all(), k
        torch.testing.assert_close(s0[k], getattr(single_eql, k), rtol=1e-6, atol=0)
    for k, v in single_ecm.state_dict().items():
        assert torch.equal(s0["ecm." + k], v), k
    assert int(s0["ecm.measured_iters"]) == 2
