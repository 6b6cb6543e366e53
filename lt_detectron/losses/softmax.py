"""Softmax cross-entropy over C+1 classes: Detectron2's Fast R-CNN classification loss, ``softmax``.

``forward(logits (R, C+1), gt_classes (R,) in [0, C]) = mean_r CE(softmax(z_r), gt_r)`` (Detectron2's
``cross_entropy(..., reduction="mean")``: R = 0 gives a zero connected to the graph); ``predict_probs``
is ``softmax(z)``, background last. The classifier is Detectron2's (``MODEL.LT.CLASSIFIER`` linear, or
cosine with ``COSINE_SCALE``). docs/methods.md#softmax-baseline.
"""

from typing import Optional

import torch
import torch.nn.functional as F

from .base import ROI_LOSS_REGISTRY, ROIBatch, ROILoss

__all__ = ["SoftmaxROILoss"]


@ROI_LOSS_REGISTRY.register("softmax")
class SoftmaxROILoss(ROILoss):
    """Softmax cross-entropy (Detectron2's default ROI classification loss). Stateless."""

    score_activation = "softmax"

    def forward(
        self, logits: torch.Tensor, gt_classes: torch.Tensor, batch: Optional[ROIBatch] = None
    ) -> torch.Tensor:
        self._check_logits(logits)
        if logits.shape[0] == 0:
            return logits.sum() * 0.0
        return F.cross_entropy(logits, gt_classes.long(), reduction="mean")

    def predict_probs(self, logits: torch.Tensor) -> torch.Tensor:
        return F.softmax(logits, dim=-1)
