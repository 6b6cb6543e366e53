"""Sigmoid focal loss (Detectron2 / fvcore semantics) with an optional per-channel weight.

Used by BOFL (per-channel class weights on top of alpha_t) and by the dense (one-stage) variants of
EQL v2 and ECM.
"""
from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["sigmoid_focal_loss"]


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
