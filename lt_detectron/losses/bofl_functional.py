"""BOFL's functional forms (:mod:`lt_detectron.losses.bofl` describes the method): the dataset
weights, the linear schedule, the class weights, the per-image GT counts and the weighted focal loss
(the registered loss, :class:`~lt_detectron.losses.bofl.BOFLDenseLoss`, bundles them).
"""

import math
from typing import Optional, Sequence

import torch

from .focal import sigmoid_focal_loss

__all__ = [
    "bofl_dataset_weights",
    "BOFLSchedule",
    "bofl_class_weights",
    "batch_class_counts",
    "bofl_focal_loss",
]


def bofl_dataset_weights(instance_counts, dtype=torch.float32) -> torch.Tensor:
    """alpha_i = n / (C * n_i) with n = sum_i n_i and C = len(instance_counts), shape (C,).

    Classes with n_i = 0 have an infinite inverse frequency; we set their alpha to 1 (neutral: such a class
    never appears as a positive, so only its negative terms exist and we neither boost nor suppress them).
    Balanced counts give all ones.
    """
    n = torch.as_tensor(instance_counts, dtype=torch.float64).flatten()
    C = n.numel()
    total = n.sum()
    alpha = torch.ones_like(n)
    nz = n > 0
    alpha[nz] = total / (C * n[nz])
    return alpha.to(dtype)


class BOFLSchedule:
    """lambda(epoch) = clip((e - d) / (T - d), 0, 1), e = floor(epoch) (0-based) unless ``per_iteration``.

    Args:
        total_epochs: T.  deferred_epochs: d (lambda = 0 while e <= d, 1 at e >= T).
        per_iteration: use the fractional epoch (per-step update; the paper found per-epoch better).
    If T == d, lambda is 0 before epoch d and 1 from epoch d on.
    """

    def __init__(
        self, total_epochs: float, deferred_epochs: float = 0, per_iteration: bool = False
    ):
        if total_epochs < deferred_epochs:
            raise ValueError("total_epochs must be >= deferred_epochs")
        self.total_epochs = float(total_epochs)
        self.deferred_epochs = float(deferred_epochs)
        self.per_iteration = bool(per_iteration)

    @staticmethod
    def epoch_from_iter(iteration: int, ims_per_batch: int, images_per_epoch: int) -> float:
        """Fractional epoch of a 0-based iteration for an iteration-based trainer (global batch)."""
        return iteration * ims_per_batch / float(images_per_epoch)

    def __call__(self, epoch: float) -> float:
        e = float(epoch) if self.per_iteration else float(math.floor(epoch))
        T, d = self.total_epochs, self.deferred_epochs
        if T == d:
            return 1.0 if e >= d else 0.0
        return min(max((e - d) / (T - d), 0.0), 1.0)


def bofl_class_weights(
    alpha: torch.Tensor,
    lam: float,
    kappa: float = 1.0,
    eta: Optional[float] = None,
    batch_counts: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """w_hat = (1 + kappa * lam * (alpha - 1)) * eta_hat ** batch_counts, eta_hat = 1 + lam * (eta - 1).

    Args:
        alpha: (C,) dataset weights from :func:`bofl_dataset_weights`.
        lam: schedule value in [0, 1].  kappa: intensity (1 on COCO, ~0.05 for LVIS-like tails).
        eta: batch-wise base (0.8 CenterNet per image, 0.999 FCOS per batch); None disables the batch term.
        batch_counts: (K, C) GT-object counts n_{i,k} per image/batch k (:func:`batch_class_counts`).
    Returns:
        (K, C) weights; (1, C) when ``eta`` or ``batch_counts`` is None. Exactly 1 when lam = 0.
    """
    alpha = torch.as_tensor(alpha)
    a_hat = 1.0 + kappa * lam * (alpha - 1.0)
    if eta is None or batch_counts is None:
        if (eta is None) != (batch_counts is None):
            raise ValueError("eta and batch_counts must be given together")
        return a_hat.reshape(1, -1)
    eta_hat = 1.0 + lam * (eta - 1.0)
    counts = torch.as_tensor(batch_counts).to(device=alpha.device, dtype=alpha.dtype)
    return a_hat.reshape(1, -1) * torch.pow(torch.as_tensor(eta_hat, dtype=alpha.dtype), counts)


def batch_class_counts(
    gt_classes_list: Sequence[torch.Tensor], num_classes: int, per_image: bool = True
):
    """GT-object counts per class: (K, C) for K images (``per_image``) or (1, C) summed over the local batch.

    Labels outside [0, num_classes) (background / ignore) are not counted. Counts are local: never
    all-reduce them (eta was tuned for local counts).
    """
    rows = []
    for g in gt_classes_list:
        g = torch.as_tensor(g).long().flatten()
        g = g[(g >= 0) & (g < num_classes)]
        rows.append(torch.bincount(g, minlength=num_classes).to(torch.float32))
    if not rows:
        return torch.zeros(1 if not per_image else 0, num_classes)
    counts = torch.stack(rows)
    return counts if per_image else counts.sum(0, keepdim=True)


def bofl_focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    class_weights: torch.Tensor,
    image_index: Optional[torch.Tensor] = None,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "sum",
) -> torch.Tensor:
    """Sigmoid focal loss (with alpha_t) times per-channel BOFL weights, broadcast over locations.

    Args:
        logits, targets: (M, C) (flattened valid locations) or (K, A, C) per image.
        class_weights: (C,), (1, C) or (K, C) from :func:`bofl_class_weights`.
        image_index: (M,) image id of each row, required for (M, C) inputs with K > 1 weight rows.
    Returns:
        loss with ``reduction`` (default sum; no normalisation by the weights).
    """
    w = torch.as_tensor(class_weights).to(device=logits.device)
    if w.dim() == 1:
        w = w.reshape(1, -1)
    if w.shape[0] > 1:
        if logits.dim() == 3:
            w = w[:, None, :]
        else:
            if image_index is None:
                raise ValueError("image_index is required for (M, C) logits with per-image weights")
            w = w[image_index.to(logits.device).long()]
    return sigmoid_focal_loss(logits, targets, alpha, gamma, reduction=reduction, weight=w)
