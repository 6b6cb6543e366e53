"""ECM: Effective Class-Margins (Cho and Kraehenbuehl, ECCV 2022), logit form.

The maths (margins, weights, the measured background ratio, the dense prior) and every choice:
docs/methods.md#ecm (ROI form: docs/methods.md#ecm-on-roi-heads; dense and heat-map forms:
docs/methods.md#ecm-on-dense-heads and docs/methods.md#centernet-heat-map-forms).

Contract:

- :class:`ECMLoss` (``ROI_LOSS_REGISTRY`` ``ecm``, from ``MODEL.LT.ECM.*`` and the training instance
  counts): logits ``(R, C+1)``, background last (column ``C``), ``gt_classes`` ``(R,)`` in ``[0, C]``;
  returns the scalar weighted BCE on ``2 z + delta`` summed over all columns and divided by ``R``
  (evaluated in logit form, finite for any finite logit). ``predict_probs`` =
  :func:`objectness_scores`, ``(R, C+1)``, background last.
- :class:`ECMDenseLoss` (``DENSE_LOSS_REGISTRY`` ``ecm``; :class:`ECMFocalLoss` is the same loss on
  one-hot targets): logits ``(M, C)``, no background column, labels ``(M,)`` in ``[0, C]``; returns a
  **sum** (the detector divides by its own normaliser); ``heatmap`` takes ``(N, C, H, W)`` logits and
  Gaussian targets.
- State, persistent buffers: ``margins``, ``weights`` (the values in use) and, on ROI heads,
  ``bg_fg_ratio``, ``measured_iters``, ``measured_bg``, ``measured_fg``. With ``measure_iters = K > 0``
  the first K training calls count background / foreground ROIs, SUM-all-reduced across ranks (every
  rank calls the loss on each of them; a batch with a non-finite logit on any rank is not counted),
  then the ratio is frozen; resuming is exact.
"""

from typing import Optional

import torch
import torch.nn as nn

from .base import (
    DENSE_LOSS_REGISTRY,
    ROI_LOSS_REGISTRY,
    DenseBatch,
    DenseLoss,
    ROIBatch,
    ROILoss,
    class_counts,
)
from .distributed import all_reduce_sum, warn_nonfinite_skip
from .eqlv2 import objectness_scores
from .focal import labels_to_targets, penalty_reduced_focal_loss, sigmoid_focal_loss
from .sigmoid import fused_weighted_bce

__all__ = [
    "ecm_margins_and_weights",
    "objectness_scores",
    "ECMLoss",
    "ECMFocalLoss",
    "ECMDenseLoss",
    "ecm_focal_loss",
]

DEFAULT_BG_FG_RATIO = 6.3313


def ecm_margins_and_weights(instance_counts, bg_fg_ratio=DEFAULT_BG_FG_RATIO, with_background=True):
    """Margins delta and detection weights m (float64).

    Args:
        instance_counts: (C,) per-class training instance counts (zero counts are clamped to 1).
        bg_fg_ratio: r; n_bg = r * sum(n_c). Ignored if ``with_background`` is False.
        with_background: True -> (C+1,) vectors with the background column last (two-stage form);
            False -> (C,) vectors, n_c^- = sum n - n_c (one-stage form).
    """
    n = torch.as_tensor(instance_counts, dtype=torch.float64).flatten().clamp(min=1.0)
    if with_background:
        n = torch.cat([n, (n.sum().reshape(1) * float(bg_fg_ratio)).clamp(min=1.0)])
    n_neg = (n.sum() - n).clamp(min=1.0)
    delta = 0.25 * (torch.log(n) - torch.log(n_neg))
    a = n_neg / n
    m = a * torch.log1p(1.0 / a)
    return delta, m


@ROI_LOSS_REGISTRY.register("ecm")
class ECMLoss(ROILoss):
    """ECM ROI loss. ``forward(logits (R, C+1), gt_classes (R,), batch=None) -> scalar`` (sum over all C+1
    columns / R). ``predict_probs``: :func:`objectness_scores`.

    Args:
        instance_counts: (C,) training instance counts per class (before RFS).
        bg_fg_ratio: r constant (#bg / #fg ROIs); 6.3313 = authors' LVIS v1 value.
        measure_iters: K > 0 measures r over the first K training calls, then freezes it
            (docs/methods.md#ecm-on-roi-heads).
        classifier, cosine_scale, prior_prob (keyword-only): the classifier options of
            :class:`~lt_detectron.losses.base.ROILoss` (the authors: cosine, temperature 20, with bias).
    Buffers ``margins`` (delta) and ``weights`` (m), (C+1,) float32, are the values in use.
    """

    needs_class_stats = True

    def __init__(
        self,
        instance_counts,
        bg_fg_ratio: float = DEFAULT_BG_FG_RATIO,
        measure_iters: int = 0,
        *,
        classifier: str = "linear",
        cosine_scale: float = 20.0,
        prior_prob: float = -1.0,
    ):
        counts = torch.as_tensor(instance_counts, dtype=torch.float64).flatten()
        super().__init__(
            int(counts.numel()),
            classifier=classifier,
            cosine_scale=cosine_scale,
            prior_prob=prior_prob,
        )
        self.measure_iters = int(measure_iters)
        self.register_buffer("instance_counts", counts)
        self.register_buffer("bg_fg_ratio", torch.tensor(float(bg_fg_ratio), dtype=torch.float64))
        self.register_buffer("measured_iters", torch.tensor(0, dtype=torch.long))
        self.register_buffer("measured_bg", torch.tensor(0, dtype=torch.long))
        self.register_buffer("measured_fg", torch.tensor(0, dtype=torch.long))
        self.register_buffer("margins", torch.zeros(self.num_classes + 1, dtype=torch.float32))
        self.register_buffer("weights", torch.zeros(self.num_classes + 1, dtype=torch.float32))
        self.num_nonfinite_skips = (
            0  # measuring batches dropped for non-finite logits (not checkpointed)
        )
        self._recompute()

    @classmethod
    def from_config(cls, cfg, num_classes: int, class_stats=None) -> dict:
        ret = super().from_config(cfg, num_classes, class_stats)
        del ret["num_classes"]  # from the counts
        e = cfg.MODEL.LT.ECM
        return dict(
            ret,
            instance_counts=class_counts(class_stats),
            bg_fg_ratio=e.BG_FG_RATIO,
            measure_iters=e.MEASURE_ITERS,
        )

    def _recompute(self):
        delta, m = ecm_margins_and_weights(self.instance_counts, float(self.bg_fg_ratio), True)
        self.margins.copy_(delta.to(self.margins))
        self.weights.copy_(m.to(self.weights))

    @property
    def measuring(self) -> bool:
        return self.measure_iters > 0 and int(self.measured_iters) < self.measure_iters

    @torch.no_grad()
    def _measure(self, gt_classes, logits):
        C = self.num_classes
        gt_classes = gt_classes.to(self.measured_bg.device)
        num_bg = (gt_classes == C).sum()
        nonfinite = (~torch.isfinite(logits.detach())).any().to(device=num_bg.device)
        # one collective: the counts and whether any rank saw a non-finite logit
        cnt = torch.stack([num_bg, gt_classes.numel() - num_bg, nonfinite.long()]).to(torch.long)
        all_reduce_sum(cnt)
        cnt = cnt.to(self.measured_bg.device)
        if int(cnt[2]) > 0:
            # decided on the reduced flag, so every rank skips together and the ranks' buffers stay equal
            warn_nonfinite_skip(
                self, "the measured bg:fg ROI ratio (measured_bg/measured_fg/measured_iters)"
            )
            return
        self.measured_bg += cnt[0]
        self.measured_fg += cnt[1]
        self.measured_iters += 1
        if int(self.measured_iters) == self.measure_iters and int(self.measured_fg) > 0:
            self.bg_fg_ratio.fill_(float(self.measured_bg) / float(self.measured_fg))
            self._recompute()

    def forward(
        self, logits: torch.Tensor, gt_classes: torch.Tensor, batch: Optional[ROIBatch] = None
    ) -> torch.Tensor:
        self._check_logits(logits)
        # loss with the margins in force *before* this batch's measurement
        loss, _, _ = fused_weighted_bce(
            logits, gt_classes, self.weights, input_scale=2.0, input_bias=self.margins
        )
        if self.training and self.measuring:
            self._measure(gt_classes, logits)
        return loss

    def predict_probs(self, logits: torch.Tensor) -> torch.Tensor:
        return objectness_scores(logits)

    def extra_repr(self) -> str:
        return "num_classes=%d, bg_fg_ratio=%.6g, measure_iters=%d" % (
            self.num_classes,
            float(self.bg_fg_ratio),
            self.measure_iters,
        )


def ecm_focal_loss(logits, targets, margins, weights=None, alpha: float = 0.25, gamma: float = 2.0):
    """One-stage ECM: sum of the sigmoid focal loss on 2z + delta (targets (M, C)), times m_c when
    ``weights`` is given. ``logits`` (M, C); fp16/bf16 are computed in float32; M = 0 gives 0."""
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    z = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    x = 2.0 * z + margins.to(z.dtype)
    return sigmoid_focal_loss(
        x,
        targets,
        alpha,
        gamma,
        reduction="sum",
        weight=None if weights is None else weights.to(z.dtype),
    )


class ECMFocalLoss(nn.Module):
    """One-stage ECM (supplement; docs/methods.md#ecm-on-dense-heads), on one-hot targets.

    ``forward(logits (M, C), targets (M, C)) -> scalar`` with one-hot targets (background = all-zero row),
    reduction = sum. ``use_class_weights=False`` drops the class weights (margins only).
    """

    def __init__(
        self,
        instance_counts,
        gamma: float = 2.0,
        alpha: float = 0.25,
        use_class_weights: bool = True,
    ):
        super().__init__()
        self.use_class_weights = bool(use_class_weights)
        delta, m = ecm_margins_and_weights(instance_counts, with_background=False)
        self.num_classes = int(delta.numel())
        self.gamma = float(gamma)
        self.alpha = float(alpha)
        self.register_buffer("margins", delta.float())
        self.register_buffer("weights", m.float())

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"expected logits (M, {self.num_classes}), got {tuple(logits.shape)}")
        return ecm_focal_loss(
            logits,
            targets,
            self.margins,
            self.weights if self.use_class_weights else None,
            self.alpha,
            self.gamma,
        )


@DENSE_LOSS_REGISTRY.register("ecm")
class ECMDenseLoss(DenseLoss):
    """One-stage ECM for the dense heads: labels in (the protocol), the loss of :class:`ECMFocalLoss`.

    ``forward(logits (M, C), labels (M,) in [0, C], batch=None) -> scalar`` (sum); :meth:`heatmap`
    ``((N, C, H, W) logits, Gaussian targets) -> scalar`` (sum). Buffers ``margins``, ``weights`` (C,)
    are constants of the instance counts.

    ``test_score`` (``MODEL.LT.ECM.DENSE_TEST_SCORE``, ``"z"`` or ``"trained"``): which sigmoid
    :meth:`predict_probs` returns; ``prior`` (``MODEL.LT.ECM.DENSE_PRIOR``, ``"trained"`` by default, or
    ``"z"``): which bias :meth:`prior_logits` gives the head. What each means and why the default:
    docs/methods.md#ecm-on-dense-heads.
    """

    needs_class_stats = True
    # the values of DENSE_TEST_SCORE and DENSE_PRIOR: which sigmoid the setting refers to
    SCORE_CHOICES = ("z", "trained")

    def __init__(
        self,
        instance_counts,
        *,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        test_score: str = "z",
        prior: str = "trained",
    ):
        delta, m = ecm_margins_and_weights(instance_counts, with_background=False)
        super().__init__(int(delta.numel()), focal_alpha=focal_alpha, focal_gamma=focal_gamma)
        for key, value in (("DENSE_TEST_SCORE", test_score), ("DENSE_PRIOR", prior)):
            if value not in self.SCORE_CHOICES:
                raise ValueError(
                    f"MODEL.LT.ECM.{key} must be one of {self.SCORE_CHOICES}, got {value!r}"
                )
        self.test_score, self.prior = test_score, prior
        self.register_buffer("margins", delta.float())
        self.register_buffer("weights", m.float())

    @classmethod
    def from_config(
        cls,
        cfg,
        num_classes: int,
        class_stats=None,
        *,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> dict:
        return dict(
            instance_counts=class_counts(class_stats),
            focal_alpha=focal_alpha,
            focal_gamma=focal_gamma,
            test_score=cfg.MODEL.LT.ECM.DENSE_TEST_SCORE,
            prior=cfg.MODEL.LT.ECM.DENSE_PRIOR,
        )

    def prior_logits(self, prior_prob: float) -> torch.Tensor:
        b = super().prior_logits(prior_prob)
        if self.prior == "z":
            return b
        return ((b.double() - self.margins.double()) / 2).float()  # sigma(2b + delta) = prior_prob

    def predict_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Scores of ``logits`` with the classes on dim 1 (``(M, C)`` or ``(N, C, H, W)``)."""
        if self.test_score == "z":
            return torch.sigmoid(logits)
        shape = [1, self.num_classes] + [1] * (logits.dim() - 2)
        return torch.sigmoid(2.0 * logits + self.margins.view(shape).to(logits.dtype))

    def extra_repr(self) -> str:
        return super().extra_repr() + ", test_score=%s, prior=%s" % (self.test_score, self.prior)

    def forward(
        self, logits: torch.Tensor, labels: torch.Tensor, batch: Optional[DenseBatch] = None
    ) -> torch.Tensor:
        self._check_logits(logits)
        target = labels_to_targets(labels, self.num_classes, logits.dtype)
        return ecm_focal_loss(
            logits, target, self.margins, self.weights, self.focal_alpha, self.focal_gamma
        )

    def heatmap(
        self,
        logits: torch.Tensor,
        heat: torch.Tensor,
        batch: Optional[DenseBatch] = None,
        alpha: float = 2.0,
        beta: float = 4.0,
    ) -> torch.Tensor:
        C = self.num_classes
        z = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
        x = 2.0 * z + self.margins.view(1, C, 1, 1).to(z.dtype)
        return penalty_reduced_focal_loss(
            x, heat, alpha, beta, weight=self.weights.view(1, C, 1, 1)
        )
