"""Tests for lt_detectron.losses.bags (expected values computed independently in this file)."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from lt_detectron.losses.bags import BAGSLayout, BAGSLoss, bags_scores


# ----------------------------------------------------------------------------- independent reference
def ref_groups(counts, edges=(10, 100, 1000)):
    """Independent grouping: list of class lists for the non-empty bins, in bin order."""
    bins = [[] for _ in range(len(edges) + 1)]
    for c, n in enumerate(counts):
        b = 0
        while b < len(edges) and n >= edges[b]:
            b += 1
        bins[b].append(c)
    return [g for g in bins if g]


def ref_layout(counts, edges=(10, 100, 1000)):
    """(groups, slices, slot_of_label per group as dicts) following the documented layout."""
    groups = ref_groups(counts, edges)
    C = len(counts)
    slices, start = [], 0
    for g in groups:
        slices.append((start, start + len(g) + 1))
        start += len(g) + 1
    slices.append((start, start + 2))
    luts = []
    for g in groups:
        luts.append([g.index(l) + 1 if l in g else 0 for l in range(C + 1)])
    luts.append([1 if l == C else 0 for l in range(C + 1)])
    return groups, slices, luts


def naive_group_losses(logits, gt, counts, selection, edges=(10, 100, 1000)):
    """Per-group loop with boolean indexing; selection (R, N+1) bool gives the ROIs of each group."""
    groups, slices, luts = ref_layout(counts, edges)
    out = []
    for n, ((a, b), lut) in enumerate(zip(slices, luts)):
        tgt = torch.tensor([lut[int(l)] for l in gt], dtype=torch.long)
        sel = selection[:, n]
        if n < len(groups) and not bool((tgt > 0).any()):
            out.append(logits.sum() * 0.0)
            continue
        if int(sel.sum()) == 0:
            out.append(logits.sum() * 0.0)
            continue
        out.append(F.cross_entropy(logits[sel, a:b], tgt[sel], reduction="sum") / int(sel.sum()))
    return torch.stack(out)


COUNTS_EMPTY_BIN = [2, 50, 2000, 7]  # bins 0, 1, 3, 0 -> bin [100,1000) is empty and dropped
COUNTS_ALL = [0, 5, 10, 99, 100, 999, 1000, 5000, 3]  # edges hit exactly; a zero-count class


# ----------------------------------------------------------------------------- layout
def test_layout_empty_bin_dropped_hand_made():
    lay = BAGSLayout(COUNTS_EMPTY_BIN)
    # G0 = {0, 3}, G1 = {1}, G2 = {2}; layout [o c0 c3 | o c1 | o c2 | fg bg]
    assert lay.num_classes == 4 and lay.num_groups == 3 and lay.num_logits == 4 + 3 + 2 == 9
    assert lay.group_bins == (0, 1, 3)
    assert lay.group_classes == ((0, 3), (1,), (2,))
    assert [(s.start, s.stop) for s in lay.group_slices] == [(0, 3), (3, 5), (5, 7), (7, 9)]
    assert lay.group_of_class.tolist() == [0, 1, 2, 0]
    assert lay.slot_of_class.tolist() == [1, 1, 1, 2]
    assert lay.column_of_label.tolist() == [1, 4, 6, 2, 8]
    assert lay.group_start.tolist() == [0, 3, 5, 7]
    assert lay.column_group.tolist() == [0, 0, 0, 1, 1, 2, 2, 3, 3]
    assert lay.label_to_slot.tolist() == [
        [1, 0, 0, 2, 0],
        [0, 1, 0, 0, 0],
        [0, 0, 1, 0, 0],
        [0, 0, 0, 0, 1],
    ]
    assert lay.class_to_group_slot(3) == (0, 2)
    assert lay.class_to_group_slot(4) == (3, 1)  # background
    # LUT buffers are non-persistent (not in the checkpoint)
    assert lay.state_dict() == {}
    assert "label_to_slot" in dict(lay.named_buffers())


def test_layout_bin_edges_and_zero_count():
    lay = BAGSLayout(COUNTS_ALL)
    # [0,10): 0,1,8 ; [10,100): 2,3 ; [100,1000): 4,5 ; [1000,inf): 6,7
    assert lay.group_classes == ((0, 1, 8), (2, 3), (4, 5), (6, 7))
    assert lay.num_logits == 9 + 4 + 2
    # "others" is slot 0 of every fg group: no class maps to a group's start column
    assert not set(lay.column_of_label[:-1].tolist()) & set(lay.group_start[:-1].tolist())
    groups, slices, luts = ref_layout(COUNTS_ALL)
    assert [list(g) for g in lay.group_classes] == groups
    assert lay.label_to_slot.tolist() == luts


def test_layout_lvis_like_sizes_from_instance_counts():
    g = torch.Generator().manual_seed(0)
    sizes = [200, 412, 334, 257]  # LVIS v1 group sizes
    lo_hi = [(0, 10), (10, 100), (100, 1000), (1000, 50000)]
    counts = torch.cat(
        [torch.randint(lo, hi, (n,), generator=g) for (lo, hi), n in zip(lo_hi, sizes)]
    )
    counts = counts[torch.randperm(len(counts), generator=g)]
    lay = BAGSLayout(counts)
    assert lay.num_classes == 1203 and lay.num_logits == 1209
    assert [len(c) for c in lay.group_classes] == sizes
    assert lay.group_sizes == tuple(s + 1 for s in sizes) + (2,)
    # classes within a group are in ascending contiguous-id order
    for cls in lay.group_classes:
        assert list(cls) == sorted(cls)


def test_layout_rejects_bad_input():
    with pytest.raises(ValueError):
        BAGSLayout([1, -1])
    with pytest.raises(ValueError):
        BAGSLayout([1, 2], bin_edges=(100, 10))


def test_label_remapping():
    lay = BAGSLayout(COUNTS_EMPTY_BIN)
    gt = torch.tensor([0, 1, 2, 3, 4, 4, 3])
    want = torch.tensor(
        [
            [1, 0, 0, 0],  # class 0: slot 1 of G0, others elsewhere, fg in bg group
            [0, 1, 0, 0],
            [0, 0, 1, 0],
            [2, 0, 0, 0],
            [0, 0, 0, 1],  # background: others everywhere, bg slot in the bg group
            [0, 0, 0, 1],
            [2, 0, 0, 0],
        ]
    )
    assert torch.equal(lay.remap_labels(gt), want)
    assert torch.equal(lay.target_columns(gt), want + torch.tensor([0, 3, 5, 7]))


# ----------------------------------------------------------------------------- loss
def _batch(counts, R, seed, dtype=torch.float64, bg_frac=0.5, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    C = len(counts)
    lay = BAGSLayout(counts)
    gt = torch.randint(0, C, (R,), generator=g)
    gt[torch.rand(R, generator=g) < bg_frac] = C
    logits = (torch.randn(R, lay.num_logits, generator=g, dtype=dtype) * scale).requires_grad_()
    return logits, gt


def test_loss_matches_naive_when_all_others_selected():
    counts = COUNTS_ALL
    logits, gt = _batch(counts, 40, 1)
    gt[gt == 4] = 0  # group [100,1000) loses positives of class 4 ...
    gt[gt == 5] = 0  # ... and class 5 -> that group must be skipped
    loss_fn = BAGSLoss(counts, beta=1e6)  # m >= #non-members -> every ROI selected -> deterministic
    per_group = loss_fn.group_losses(logits, gt)
    sel = torch.ones(40, 5, dtype=torch.bool)
    ref = naive_group_losses(logits, gt, counts, sel)
    torch.testing.assert_close(per_group, ref)
    assert per_group[2].item() == 0.0  # no positives -> skipped
    loss = loss_fn(logits, gt)
    torch.testing.assert_close(loss, ref.sum())
    (g1,) = torch.autograd.grad(loss, logits)
    (g2,) = torch.autograd.grad(ref.sum(), logits)
    torch.testing.assert_close(g1, g2)
    # skipped group's columns get no gradient
    assert torch.all(g1[:, loss_fn.layout.group_slices[2]] == 0)


def test_loss_matches_naive_with_sampled_selection():
    counts = COUNTS_ALL
    logits, gt = _batch(counts, 200, 2, bg_frac=0.8)
    loss_fn = BAGSLoss(counts, beta=2)
    gen = torch.Generator().manual_seed(123)
    loss = loss_fn(logits, gt, generator=gen)
    sel = loss_fn.sample_selection(gt, torch.Generator().manual_seed(123))
    ref = naive_group_losses(logits, gt, counts, sel)
    torch.testing.assert_close(loss, ref.sum())
    # same selection through the explicit override
    torch.testing.assert_close(loss_fn.group_losses(logits, gt, selection=sel), ref)
    (g1,) = torch.autograd.grad(loss, logits)
    (g2,) = torch.autograd.grad(ref.sum(), logits)
    torch.testing.assert_close(g1, g2)


@pytest.mark.parametrize("beta", [2.0, 1.5, 0.0])
def test_sampling_count_and_membership(beta):
    counts = COUNTS_EMPTY_BIN  # groups {0,3}, {1}, {2}
    C = 4
    # 3 ROIs of G0, 2 of G1, 0 of G2, 10 background
    gt = torch.tensor([0, 3, 0, 1, 1] + [C] * 10)
    R = len(gt)
    loss_fn = BAGSLoss(counts, beta=beta)
    groups = [[0, 3], [1], [2]]
    for seed in range(20):
        sel = loss_fn.sample_selection(gt, torch.Generator().manual_seed(seed))
        assert sel.shape == (R, 4) and sel.dtype == torch.bool
        assert bool(sel[:, 3].all())  # background group: all ROIs
        for n, members in enumerate(groups):
            pos = torch.tensor([int(l) in members for l in gt])
            npos = int(pos.sum())
            m = math.floor(beta * npos)
            n_others = min(m, R - npos)
            assert bool(sel[pos, n].all())  # positives always in
            assert int(sel[~pos, n].sum()) == n_others
            if npos == 0:
                assert not bool(sel[:, n].any())


def test_sampling_is_uniform_over_bg_and_other_groups():
    counts = COUNTS_EMPTY_BIN
    C = 4
    gt = torch.tensor(
        [1] + [0, 3, 2] + [C] * 6
    )  # G1 has 1 positive, 9 non-members (3 fg of other groups)
    loss_fn = BAGSLoss(counts, beta=3)  # m = 3 of 9
    gen = torch.Generator().manual_seed(0)
    hits = torch.zeros(len(gt))
    T = 3000
    for _ in range(T):
        hits += loss_fn.sample_selection(gt, gen)[:, 1].float()
    freq = hits[1:] / T
    assert hits[0] == T
    # expected 1/3 each; binomial sd ~ 0.0086 -> 5 sd tolerance
    assert torch.all((freq - 1 / 3).abs() < 0.045), freq
    # same generator seed -> same selection (reproducible)
    s1 = loss_fn.sample_selection(gt, torch.Generator().manual_seed(7))
    s2 = loss_fn.sample_selection(gt, torch.Generator().manual_seed(7))
    assert torch.equal(s1, s2)


def test_all_background_batch_only_bg_group():
    counts = COUNTS_ALL
    C = len(counts)
    logits, _ = _batch(counts, 12, 3)
    gt = torch.full((12,), C)
    loss_fn = BAGSLoss(counts)
    per = loss_fn.group_losses(logits, gt)
    assert torch.all(per[:-1] == 0)
    bg = loss_fn.layout.group_slices[-1]
    torch.testing.assert_close(
        per[-1], F.cross_entropy(logits[:, bg], torch.ones(12, dtype=torch.long))
    )
    (g,) = torch.autograd.grad(per.sum(), logits)
    assert torch.all(g[:, : bg.start] == 0)


def test_empty_batch_zero_loss_connected():
    loss_fn = BAGSLoss(COUNTS_ALL)
    logits = torch.zeros(0, loss_fn.num_logits, requires_grad=True)
    loss = loss_fn(logits, torch.zeros(0, dtype=torch.long))
    assert loss.shape == () and loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert logits.grad is not None and logits.grad.shape == (0, loss_fn.num_logits)


def test_gradcheck_float64():
    counts = COUNTS_ALL
    logits, gt = _batch(counts, 30, 4, scale=1.0)
    loss_fn = BAGSLoss(counts, beta=2)
    sel = loss_fn.sample_selection(gt, torch.Generator().manual_seed(5))
    assert torch.autograd.gradcheck(lambda z: loss_fn.group_losses(z, gt, selection=sel), (logits,))


def test_wrong_logit_width_raises():
    loss_fn = BAGSLoss(COUNTS_ALL)
    with pytest.raises(ValueError):
        loss_fn(torch.zeros(3, loss_fn.num_logits - 1), torch.zeros(3, dtype=torch.long))


# ----------------------------------------------------------------------------- inference
def test_scores_hand_computation():
    lay = BAGSLayout(COUNTS_EMPTY_BIN)  # [o c0 c3 | o c1 | o c2 | fg bg]
    row = [0.5, 1.0, -2.0, 3.0, 0.0, -1.0, 2.0, 1.5, 0.25]
    logits = torch.tensor([row], dtype=torch.float64)
    e = [math.exp(v) for v in row]
    p_fg = e[7] / (e[7] + e[8])
    p_bg = e[8] / (e[7] + e[8])
    g0 = e[0] + e[1] + e[2]
    want = [
        p_fg * e[1] / g0,
        p_fg * e[4] / (e[3] + e[4]),
        p_fg * e[6] / (e[5] + e[6]),
        p_fg * e[2] / g0,
        p_bg,
    ]
    out = bags_scores(logits, lay)
    assert out.shape == (1, 5)
    torch.testing.assert_close(out, torch.tensor([want], dtype=torch.float64))
    assert BAGSLoss(COUNTS_EMPTY_BIN).scores(logits).allclose(out)


# ----------------------------------------------------------------------------- properties
@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    R=st.integers(0, 40),
    bg_frac=st.sampled_from([0.0, 0.5, 1.0]),
    extreme=st.booleans(),
    beta=st.sampled_from([0.5, 1.0, 8.0]),
    counts=st.lists(st.sampled_from([0, 1, 9, 10, 99, 100, 1000, 10**6]), min_size=1, max_size=12),
)
def test_property_finite_and_matches_naive(seed, R, bg_frac, extreme, beta, counts):
    g = torch.Generator().manual_seed(seed)
    loss_fn = BAGSLoss(counts, beta=beta)
    C, K = len(counts), loss_fn.num_logits
    gt = torch.randint(0, C, (R,), generator=g)
    gt[torch.rand(R, generator=g) < bg_frac] = C
    if extreme:  # logits at +-80
        logits = torch.randint(0, 2, (R, K), generator=g).float() * 160 - 80
    else:
        logits = torch.empty(R, K).uniform_(-80, 80, generator=g)
    logits.requires_grad_()
    sel = loss_fn.sample_selection(gt, torch.Generator().manual_seed(seed))
    per = loss_fn.group_losses(logits, gt, selection=sel)
    loss = per.sum()
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    if R > 0:
        ref = naive_group_losses(logits.detach().double(), gt, counts, sel)
        torch.testing.assert_close(per.double(), ref, rtol=1e-4, atol=1e-3)
