"""Federated loss class subsets (Zhou et al., "Probabilistic two-stage detection"; Detectron2 main's
``USE_FED_LOSS``), pure torch.

Each iteration the sigmoid classifier is trained only on a subset S of the C classes: the GT
classes of the local batch plus classes sampled without replacement with probability
proportional to ``image_count ** power`` until ``|S| = num_fed_classes``. The mask is used as
the per-column weights of :func:`lt_detectron.losses.sigmoid.sigmoid_bce_loss` (sum / R). The sampling
rule and its choice: docs/methods.md#federated-loss.
"""

import torch

__all__ = ["fed_loss_class_weights", "fed_loss_classes", "fed_loss_mask"]


def fed_loss_class_weights(image_counts, power: float = 0.5) -> torch.Tensor:
    """Sampling weights ``image_count ** power`` (float32, (C,))."""
    return torch.as_tensor(image_counts, dtype=torch.float32).clamp_min(0) ** power


def fed_loss_classes(
    gt_classes: torch.Tensor,
    num_fed_classes: int,
    num_classes: int,
    weights: torch.Tensor,
    generator=None,
):
    """The class subset S: GT foreground classes of the batch, then sampled classes.

    Args:
        gt_classes: (R,) labels in [0, C], C = background (ignored).
        num_fed_classes: target size of S (50 in the paper); when the batch already has more
            GT classes, S is exactly the GT classes.
        weights: (C,) sampling weights (classes with weight 0 are never sampled).
    Returns:
        1-D long tensor of distinct class ids in [0, C).
    """
    gt = torch.unique(gt_classes[gt_classes < num_classes])
    missing = num_fed_classes - gt.numel()
    if missing <= 0:
        return gt
    prob = weights.to(device=gt_classes.device, dtype=torch.float32).clone()
    prob[gt] = 0
    missing = min(missing, int((prob > 0).sum()))
    if missing == 0:
        return gt
    sampled = torch.multinomial(prob, missing, replacement=False, generator=generator)
    return torch.cat([gt, sampled])


def fed_loss_mask(
    gt_classes, num_fed_classes, num_classes, weights, generator=None
) -> torch.Tensor:
    """(C,) 0/1 column weights selecting :func:`fed_loss_classes`."""
    mask = torch.zeros(num_classes, device=gt_classes.device)
    mask[fed_loss_classes(gt_classes, num_fed_classes, num_classes, weights, generator)] = 1.0
    return mask
