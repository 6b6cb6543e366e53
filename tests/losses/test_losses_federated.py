"""Federated loss subsets: GT classes always in, sampled classes by image_count ** power."""

import torch
import torch.nn.functional as F

from lt_detectron.losses.federated import fed_loss_class_weights, fed_loss_classes, fed_loss_mask
from lt_detectron.losses.sigmoid import sigmoid_bce_loss


def test_weights_are_image_count_power():
    torch.testing.assert_close(
        fed_loss_class_weights([4, 9, 0], 0.5), torch.tensor([2.0, 3.0, 0.0])
    )


def test_subset_has_gt_classes_and_the_right_size():
    C = 20
    w = torch.ones(C)
    w[5] = 0  # never sampled
    gt = torch.tensor([3, 3, 7, C, C])  # background C is not a class
    for seed in range(20):
        s = fed_loss_classes(gt, 6, C, w, generator=torch.Generator().manual_seed(seed))
        assert len(s) == 6 and len(set(s.tolist())) == 6
        assert {3, 7} <= set(s.tolist()) and 5 not in s.tolist() and C not in s.tolist()
    # more GT classes than the target size: exactly the GT classes
    assert sorted(fed_loss_classes(torch.tensor([0, 1, 2, 3]), 2, C, w).tolist()) == [0, 1, 2, 3]
    # fewer samplable classes than missing: all of them, no error
    assert sorted(
        fed_loss_classes(torch.tensor([0]), 10, 3, torch.tensor([1.0, 1.0, 0.0])).tolist()
    ) == [0, 1]


def test_sampling_follows_the_weights():
    C = 4
    w = torch.tensor([1.0, 3.0, 0.0, 0.0])
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(C)
    for _ in range(4000):
        counts[fed_loss_classes(torch.tensor([C]), 1, C, w, generator=g)] += 1
    assert counts[2] == counts[3] == 0
    assert abs(counts[1] / counts.sum() - 0.75) < 0.03


def test_masked_loss_equals_bce_on_the_subset():
    C = 6
    z = torch.randn(5, C + 1, dtype=torch.float64, requires_grad=True)
    gt = torch.tensor([0, 2, C, C, 2])
    mask = fed_loss_mask(
        gt, 4, C, torch.ones(C), generator=torch.Generator().manual_seed(1)
    ).double()
    loss = sigmoid_bce_loss(z, gt, class_weights=mask)
    target = F.one_hot(gt, C + 1)[:, :C].double()
    ref = (F.binary_cross_entropy_with_logits(z[:, :C], target, reduction="none") * mask).sum() / 5
    torch.testing.assert_close(loss, ref)
    (g,) = torch.autograd.grad(loss, z)
    assert (g[:, :C][:, mask == 0] == 0).all()
