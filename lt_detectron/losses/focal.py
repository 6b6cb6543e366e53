"""Sigmoid focal loss (Detectron2 / fvcore semantics) with an optional per-channel weight, CenterNet's
penalty-reduced focal loss, and the plain dense loss ``focal`` of ``MODEL.LT.DENSE_LOSS``.

The weighted forms are used by BOFL (per-channel class weights on top of alpha_t) and by the dense
(one-stage) variants of EQL v2 and ECM.
"""

from typing import Optional

import torch
import torch.nn.functional as F

from .base import DENSE_LOSS_REGISTRY, DenseBatch, DenseLoss

__all__ = [
    "sigmoid_focal_loss",
    "penalty_reduced_focal_loss",
    "labels_to_targets",
    "FocalDenseLoss",
]


def sigmoid_focal_loss(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "none",
    weight: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Sigmoid focal loss, identical to ``fvcore.nn.sigmoid_focal_loss`` when ``weight is None``.

    Args:
        inputs: logits of any shape, e.g. (M, C) for M anchors/locations and C foreground channels.
            Dense heads have no background channel: a background location has an all-zero target row.
        targets: same shape as ``inputs``, binary (or soft) targets in [0, 1].
        alpha: positive-class balance alpha_t = alpha for targets 1, 1 - alpha for targets 0; a negative
            value disables it (fvcore convention). Default 0.25 (Detectron2 RetinaNet).
        gamma: focusing exponent (default 2).
        reduction: "none" | "mean" | "sum".
        weight: optional tensor broadcastable to ``inputs`` (e.g. per-channel (C,), per-image (K, 1, C)),
            multiplied elementwise **on top of** alpha_t before the reduction. It is not normalised.
            ``weight=None`` (or all ones) reproduces the plain focal loss exactly.

    Returns:
        the loss with the given reduction (computed in float32 at least, like fvcore).
    """
    inputs = inputs.float() if inputs.dtype in (torch.float16, torch.bfloat16) else inputs
    targets = targets.to(inputs.dtype)
    p = torch.sigmoid(inputs)
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    if weight is not None:
        loss = loss * weight.to(loss.dtype)
    if reduction == "mean":
        loss = loss.mean()
    elif reduction == "sum":
        loss = loss.sum()
    elif reduction != "none":
        raise ValueError(f"Invalid reduction {reduction!r}")
    return loss


def penalty_reduced_focal_loss(logits, heat, alpha: float = 2.0, beta: float = 4.0, weight=None):
    """CenterNet/CornerNet's penalty-reduced pixel-wise focal loss, **summed** (not normalised).

    Args:
        logits: (N, C, H, W) heat-map logits (any shape works).
        heat: same shape, Gaussian targets in [0, 1]; the pixels with ``heat == 1`` are the positives.
        alpha, beta: the exponents (2 and 4 in CenterNet).
        weight: optional, broadcastable to ``logits`` (e.g. (N, C, 1, 1)): multiplies both terms per
            element (BOFL / EQL v2 / ECM channel weights).

    Positives: -(1 - p)^alpha log p; other pixels: -(1 - heat)^beta p^alpha log(1 - p). log p is computed
    as logsigmoid (no clamp), so logits in [-80, 80] stay finite.
    """
    z = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    heat = heat.to(z.dtype)
    pos = heat.eq(1).to(z.dtype)
    p = torch.sigmoid(z)
    pos_loss = -F.logsigmoid(z) * (1 - p).pow(alpha) * pos
    neg_loss = -F.logsigmoid(-z) * p.pow(alpha) * (1 - heat).pow(beta) * (1 - pos)
    loss = pos_loss + neg_loss
    if weight is not None:
        loss = loss * weight.to(loss.dtype)
    return loss.sum()


def labels_to_targets(labels: torch.Tensor, num_classes: int, dtype=torch.float32) -> torch.Tensor:
    """(M,) labels in [0, C] (C = background) -> (M, C) one-hot targets, background rows all zero."""
    return F.one_hot(labels.long(), num_classes + 1)[:, :num_classes].to(dtype)


@DENSE_LOSS_REGISTRY.register("focal")
class FocalDenseLoss(DenseLoss):
    """The plain sigmoid focal loss of RetinaNet / FCOS (alpha_t, gamma), and CenterNet's penalty-reduced
    focal loss for heat maps. Stateless; every form is a sum."""

    def forward(
        self, logits: torch.Tensor, labels: torch.Tensor, batch: Optional[DenseBatch] = None
    ) -> torch.Tensor:
        self._check_logits(logits)
        target = labels_to_targets(labels, self.num_classes, logits.dtype)
        return sigmoid_focal_loss(
            logits, target, self.focal_alpha, self.focal_gamma, reduction="sum"
        )

    def heatmap(
        self,
        logits: torch.Tensor,
        heat: torch.Tensor,
        batch: Optional[DenseBatch] = None,
        alpha: float = 2.0,
        beta: float = 4.0,
    ) -> torch.Tensor:
        return penalty_reduced_focal_loss(logits, heat, alpha, beta)
