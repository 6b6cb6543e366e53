"""BOFL (docs/methods.md#bofl): dataset weights, schedule, class weights, focal wrapper."""

import pytest
import torch

from lt_detectron.losses import (
    BOFLDenseLoss,
    BOFLSchedule,
    DenseBatch,
    batch_class_counts,
    bofl_class_weights,
    bofl_dataset_weights,
    bofl_focal_loss,
    sigmoid_bce_loss,
    sigmoid_focal_loss,
)


def test_dataset_weights():
    a = bofl_dataset_weights([10, 30, 60, 0], dtype=torch.float64)
    # n = 100, C = 4: 100/(4*10), 100/(4*30), 100/(4*60); zero count -> 1
    torch.testing.assert_close(
        a, torch.tensor([2.5, 100 / 120, 100 / 240, 1.0], dtype=torch.float64)
    )
    assert torch.equal(bofl_dataset_weights([7, 7, 7]), torch.ones(3))


def test_schedule_values():
    s = BOFLSchedule(total_epochs=12, deferred_epochs=3)
    assert [s(e) for e in (0, 2.9, 3, 3.99)] == [0.0, 0.0, 0.0, 0.0]
    assert s(4) == pytest.approx(1 / 9)
    assert s(7.5) == pytest.approx(4 / 9)  # floor(7.5) = 7
    assert s(12) == 1.0 and s(20) == 1.0
    p = BOFLSchedule(12, 3, per_iteration=True)
    assert p(7.5) == pytest.approx(4.5 / 9)
    assert BOFLSchedule(5, 5)(4.9) == 0.0 and BOFLSchedule(5, 5)(5) == 1.0


def test_schedule_epoch_boundary():
    s = BOFLSchedule(12, 3)
    # 100 images per epoch, global batch 4 (25 iterations per epoch): epoch 4 starts at iteration 100
    e_before = BOFLSchedule.epoch_from_iter(99, 4, 100)
    e_after = BOFLSchedule.epoch_from_iter(100, 4, 100)
    assert e_before == pytest.approx(3.96) and e_after == 4.0
    assert s(e_before) == 0.0 and s(e_after) == pytest.approx(1 / 9)
    # constant inside an epoch (per-epoch update), changes only at the next boundary
    assert s(BOFLSchedule.epoch_from_iter(124, 4, 100)) == pytest.approx(1 / 9)
    assert s(BOFLSchedule.epoch_from_iter(125, 4, 100)) == pytest.approx(2 / 9)


def test_class_weights_known_values():
    alpha = torch.tensor([2.5, 0.5, 1.0], dtype=torch.float64)
    # deferred: exactly one
    assert torch.equal(bofl_class_weights(alpha, 0.0), torch.ones(1, 3, dtype=torch.float64))
    # mid: lam = 0.5 -> 1 + 0.5 * (alpha - 1)
    torch.testing.assert_close(
        bofl_class_weights(alpha, 0.5), torch.tensor([[1.75, 0.75, 1.0]], dtype=torch.float64)
    )
    # end: alpha itself
    torch.testing.assert_close(bofl_class_weights(alpha, 1.0), alpha[None])
    # kappa = 0.05 at the end: 1 + 0.05 * (alpha - 1)
    torch.testing.assert_close(
        bofl_class_weights(alpha, 1.0, kappa=0.05),
        torch.tensor([[1.075, 0.975, 1.0]], dtype=torch.float64),
    )
    # eta with per-image counts, lam = 0.5: eta_hat = 1 + 0.5 * (0.8 - 1) = 0.9
    counts = torch.tensor([[2, 0, 1], [0, 3, 0]])
    w = bofl_class_weights(alpha, 0.5, eta=0.8, batch_counts=counts)
    ref = torch.tensor([[1.75 * 0.81, 0.75, 0.9], [1.75, 0.75 * 0.729, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(w, ref)
    # lam = 0 with eta: still exactly one
    assert torch.equal(
        bofl_class_weights(alpha, 0.0, eta=0.8, batch_counts=counts),
        torch.ones(2, 3, dtype=torch.float64),
    )
    with pytest.raises(ValueError):
        bofl_class_weights(alpha, 0.5, eta=0.8)


def test_batch_class_counts():
    gts = [torch.tensor([0, 0, 2]), torch.tensor([1, 3, -1]), torch.tensor([], dtype=torch.long)]
    c = batch_class_counts(gts, 3)
    assert torch.equal(c, torch.tensor([[2.0, 0, 1], [0, 1, 0], [0, 0, 0]]))
    assert torch.equal(batch_class_counts(gts, 3, per_image=False), torch.tensor([[2.0, 1, 1]]))


def _dense_batch(seed=0, K=2, A=30, C=4):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(K, A, C, generator=g) * 4
    t = torch.zeros(K, A, C)
    pos = torch.rand(K, A, generator=g) < 0.2
    cls = torch.randint(0, C, (K, A), generator=g)
    t[pos] = torch.nn.functional.one_hot(cls[pos], C).float()
    return z, t


def test_lambda_zero_is_plain_focal_exactly():
    fvcore = pytest.importorskip("fvcore.nn")
    z, t = _dense_batch()
    K, A, C = z.shape
    z, t = z.reshape(K * A, C), t.reshape(K * A, C)  # (M, C) rows, as the dense heads give them
    labels = torch.where(t.sum(1) > 0, t.argmax(1), C)
    base = fvcore.sigmoid_focal_loss(z, t, alpha=0.25, gamma=2.0, reduction="sum")
    loss_mod = BOFLDenseLoss(
        [5, 100, 3, 0],
        total_epochs=12,
        deferred_epochs=3,
        eta=0.8,
        batch_counts="image",
        iters_per_epoch=100,
    )
    gts = [torch.tensor([0, 1]), torch.tensor([3, 3, 3])]

    def batch(iteration):
        image_index = torch.arange(K).repeat_interleave(A)
        return DenseBatch(image_index=image_index, gt_classes_per_image=gts, iteration=iteration)

    for it in (0, 200, 300, 399):  # deferred phase: epochs 0, 2, 3, 3.99
        assert torch.equal(loss_mod(z, labels, batch(it)), base)
    assert torch.equal(sigmoid_focal_loss(z, t, reduction="sum"), base)
    assert not torch.allclose(loss_mod(z, labels, batch(800)), base)


def test_weights_apply_per_channel_per_image():
    z, t = _dense_batch(1)
    alpha = bofl_dataset_weights([5, 100, 3, 1])
    w = bofl_class_weights(
        alpha, 0.7, eta=0.8, batch_counts=torch.tensor([[1, 0, 2, 0], [0, 4, 0, 1]])
    )
    loss = bofl_focal_loss(z, t, w)
    # loop reference: image k, channel i weighted by w[k, i] on positive and negative terms alike
    ref = 0.0
    for k in range(2):
        for i in range(4):
            ref = ref + w[k, i] * sigmoid_focal_loss(z[k, :, i], t[k, :, i], reduction="sum")
    torch.testing.assert_close(loss, ref)
    # flattened (M, C) rows with image_index give the same value
    idx = torch.arange(2).repeat_interleave(z.shape[1])
    torch.testing.assert_close(
        bofl_focal_loss(z.reshape(-1, 4), t.reshape(-1, 4), w, image_index=idx), loss
    )


def test_roi_extension_shares_weights():
    """BOFL on a sigmoid ROI classifier = per-column weights of sigmoid_bce_loss."""
    alpha = bofl_dataset_weights([5, 100, 3])
    w = bofl_class_weights(alpha, 1.0)[0]
    g = torch.Generator().manual_seed(2)
    z = torch.randn(10, 4, generator=g)
    gt = torch.randint(0, 4, (10,), generator=g)
    y = torch.nn.functional.one_hot(gt, 4)[:, :3].float()
    ref = (
        torch.nn.functional.binary_cross_entropy_with_logits(z[:, :3], y, reduction="none") * w
    ).sum() / 10
    torch.testing.assert_close(sigmoid_bce_loss(z, gt, w), ref)


def test_bofl_loss_reads_the_epoch_length_it_is_given():
    """BOFL's loss reads its epoch length as a number from the config (MODEL.LT.BOFL.ITERS_PER_EPOCH)
    and never loads data for it: 0 without training data is an error naming the key and the fix;
    the lambda it then computes is iteration / epoch length through the schedule."""
    from detectron2.config import get_cfg

    from lt_detectron import add_lt_config
    from lt_detectron.class_stats import ClassStats
    from lt_detectron.losses import build_dense_loss

    cfg = add_lt_config(get_cfg())
    cfg.DATASETS.TRAIN = ()
    cfg.MODEL.LT.DENSE_LOSS = "bofl"
    cfg.MODEL.LT.BOFL.TOTAL_EPOCHS, cfg.MODEL.LT.BOFL.DEFERRED_EPOCHS = 5, 1
    stats = ClassStats(
        ("t",), ("a", "b", "c"), (1, 2, 3), [5, 100, 3], [5, 50, 3], 60, ["r", "f", "r"]
    )
    with pytest.raises(
        ValueError, match=r"MODEL.LT.BOFL.ITERS_PER_EPOCH is 0.0.*with_iters_per_epoch"
    ):
        build_dense_loss(cfg, 3, stats)
    cfg.MODEL.LT.BOFL.ITERS_PER_EPOCH = 4.0
    loss = build_dense_loss(cfg, 3, stats)
    # iteration 12 = epoch 3 (12 / 4): lambda = (3 - 1) / (5 - 1)
    assert loss.current_lambda(12) == pytest.approx(0.5)
    cfg.MODEL.LT.BOFL.ITERS_PER_EPOCH = 0.0
    cfg.MODEL.LT.BOFL.LINEAR_SCHEDULE = False  # lambda = 1 from the start: no epoch length needed
    assert build_dense_loss(cfg, 3, stats).current_lambda(0) == 1.0


def test_losses_import_neither_data_nor_modeling():
    """lt_detectron.losses is below data and modeling: no module of it imports them."""
    import ast
    import pathlib

    import lt_detectron.losses

    found = []
    for path in sorted(pathlib.Path(lt_detectron.losses.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [("." * node.level) + (node.module or "")]
                if node.level == 1 and node.module is None:
                    names = [".%s" % a.name for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if name.split(".")[-1] in ("data", "modeling") or any(
                    name.startswith(p)
                    for p in ("..data", "..modeling", "lt_detectron.data", "lt_detectron.modeling")
                ):
                    found.append("%s: %s" % (path.name, name))
    assert found == []
