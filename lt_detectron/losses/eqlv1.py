"""EQL v1: the Equalization Loss (Tan et al., CVPR 2020) on ROI heads.

The maths and every choice: docs/methods.md#eql-v1.

Contract:

- :class:`EQLv1Loss` (``ROI_LOSS_REGISTRY`` ``eqlv1``; linear classifier, bias prior 0.001 by
  default, as the authors' head): logits ``(R, C+1)``, background last (column ``C``), which this
  loss ignores (it gets no gradient; the authors' layer has only the C class outputs);
  ``gt_classes`` ``(R,)`` in ``[0, C]``, ``C`` = background. Returns the scalar

      L = (1/R) sum_r sum_{j<C} w_rj BCE(z_rj, y_rj),  w_rj = 1 - E(r) T(f_j) (1 - y_rj)

  with E(r) = 1 for a foreground ROI (0 for a background one) and T(f_j) = 1 when the image
  frequency f_j = image_counts_j / num_images of the training set is strictly below ``lambda_``.
  ``predict_probs`` = sigmoid of the class logits, a zero background column last (as the sigmoid
  baseline).
- State: one non-persistent ``(C,)`` float32 buffer ``tail`` (T(f_j)), rebuilt from the class
  statistics when the loss is built; nothing accumulates, nothing is all-reduced.
- Keys ``MODEL.LT.EQLV1.LAMBDA``; needs the training class statistics (``image_counts``,
  ``num_images``).
"""

from typing import Optional, Sequence

import torch

from .base import ROI_LOSS_REGISTRY, ROIBatch, ROILoss, class_counts
from .sigmoid import SigmoidROILoss, fused_weighted_bce

__all__ = ["EQLv1Loss", "eqlv1_tail_classes"]


def eqlv1_tail_classes(
    image_counts: Sequence[float], num_images: int, lambda_: float
) -> torch.Tensor:
    """T(f_j): a (C,) float32 0/1 tensor, 1 where f_j = image_counts_j / num_images < lambda_."""
    if num_images <= 0:
        raise ValueError(
            "EQL v1 needs the number of training images (ClassStats.num_images), got %d"
            % num_images
        )
    freq = torch.as_tensor(image_counts, dtype=torch.float64) / float(num_images)
    return (freq < float(lambda_)).to(torch.float32)


@ROI_LOSS_REGISTRY.register("eqlv1")
class EQLv1Loss(ROILoss):
    """Equalization loss (module docstring): sigmoid BCE over the C class columns in which, on
    foreground ROIs, the negative terms of the tail classes (f_j < lambda) are dropped.

    Args (keyword-only, besides ``num_classes`` and the classifier options):
        image_counts: (C,) training images containing each class.
        num_images: number of training images.
        lambda_: frequency threshold lambda (``MODEL.LT.EQLV1.LAMBDA``), in [0, 1].
    """

    default_prior_prob = 0.001
    needs_class_stats = True

    def __init__(
        self,
        num_classes: int,
        *,
        image_counts: Sequence[float],
        num_images: int,
        lambda_: float = 1.76e-3,
        classifier: str = "linear",
        cosine_scale: float = 20.0,
        prior_prob: float = -1.0,
    ):
        super().__init__(
            num_classes, classifier=classifier, cosine_scale=cosine_scale, prior_prob=prior_prob
        )
        if not 0.0 <= float(lambda_) <= 1.0:
            raise ValueError(
                "MODEL.LT.EQLV1.LAMBDA must be an image frequency in [0, 1], got %r" % (lambda_,)
            )
        if len(image_counts) != self.num_classes:
            raise ValueError(
                "EQL v1 got %d image counts for %d classes" % (len(image_counts), self.num_classes)
            )
        self.lambda_ = float(lambda_)
        self.register_buffer(
            "tail", eqlv1_tail_classes(image_counts, num_images, lambda_), persistent=False
        )

    @classmethod
    def from_config(cls, cfg, num_classes: int, class_stats=None) -> dict:
        ret = super().from_config(cfg, num_classes, class_stats)
        ret.update(
            image_counts=class_counts(class_stats, "image_counts").tolist(),
            num_images=int(class_stats.num_images),
            lambda_=cfg.MODEL.LT.EQLV1.LAMBDA,
        )
        return ret

    def forward(
        self, logits: torch.Tensor, gt_classes: torch.Tensor, batch: Optional[ROIBatch] = None
    ) -> torch.Tensor:
        self._check_logits(logits)
        C = self.num_classes
        dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        # positive entries: weight 1 on the C class columns, 0 on the (unused) background column
        pos_w = torch.ones(C + 1, dtype=dtype, device=logits.device)
        pos_w[C] = 0.0
        if logits.shape[0] == 0:
            return logits.sum() * 0.0
        # negative entries: 1 - E(r) T(f_j); E(r) = 1 on foreground ROIs; background column 0
        fg = (gt_classes != C).to(dtype)
        tail = torch.cat([self.tail.to(dtype), self.tail.new_zeros(1, dtype=dtype)])
        neg_w = 1.0 - fg[:, None] * tail[None, :]
        neg_w[:, C] = 0.0
        loss, _, _ = fused_weighted_bce(logits, gt_classes, neg_w, pos_w)
        return loss

    predict_probs = SigmoidROILoss.predict_probs

    def extra_repr(self) -> str:
        return "num_classes=%d, lambda_=%g, tail_classes=%d" % (
            self.num_classes,
            self.lambda_,
            int(self.tail.sum()),
        )
