"""EQL v2: Equalization Loss v2 (Tan et al., CVPR 2021), following the authors' ``eqlv2.py``.

The maths, the statistics update and every choice: docs/methods.md#eql-v2 (ROI form),
docs/methods.md#eql-v2-on-dense-heads-extension (dense form, our extension) and
docs/methods.md#centernet-heat-map-forms (heat-map form, our extension).

Contract:

- :class:`EQLv2Loss` (``ROI_LOSS_REGISTRY`` ``eqlv2``; linear classifier, bias prior 0.001 by
  default): logits ``(R, C+1)``, background/objectness last (column ``C``), ``gt_classes`` ``(R,)`` in
  ``[0, C]``; returns the scalar weighted BCE summed over all columns and divided by ``R``.
  ``predict_probs`` = :func:`objectness_scores`, ``(R, C+1)``, background last.
- :class:`EQLv2FocalLoss` (``DENSE_LOSS_REGISTRY`` ``eqlv2``): logits ``(M, C)``, no background
  column, labels ``(M,)`` in ``[0, C]``; returns the weighted focal loss as a **sum** (the detector
  divides by its own normaliser). :meth:`EQLv2FocalLoss.heatmap` takes ``(N, C, H, W)`` logits and
  Gaussian targets.
- State: buffers ``pos_grad``, ``neg_grad``, ``pos_neg`` (float32, ``(C,)``, persistent), weights
  from the statistics of the previous iterations. In training mode the increments (float32, from
  the same pass) are SUM-all-reduced across ranks on every call (every rank must call the loss, also
  with nothing to count) and skipped on every rank for an empty or non-finite batch
  (:class:`~lt_detectron.losses.grad_stats.GradientStats`). Frozen in eval mode.
- Keys ``MODEL.LT.EQLV2.{GAMMA, MU, ALPHA}``.
"""

from typing import Optional

import torch

from .base import DENSE_LOSS_REGISTRY, ROI_LOSS_REGISTRY, DenseBatch, DenseLoss, ROIBatch, ROILoss
from .focal import penalty_reduced_focal_loss
from .grad_stats import GradientStats
from .sigmoid import fused_weighted_bce
from .weighted_focal import fused_weighted_focal

__all__ = ["eqlv2_map", "objectness_scores", "EQLv2Loss", "EQLv2FocalLoss"]


def eqlv2_map(x: torch.Tensor, gamma: float = 12.0, mu: float = 0.8) -> torch.Tensor:
    """f(x) = 1 / (1 + exp(-gamma (x - mu))), computed as a (overflow-free) sigmoid."""
    return torch.sigmoid(gamma * (x - mu))


def objectness_scores(logits: torch.Tensor) -> torch.Tensor:
    """(R, C+1) logits (bg last) -> (R, C+1) scores [sigma(z_fg) * (1 - sigma(z_bg)), sigma(z_bg)].

    The background column stays last so Detectron2's ``fast_rcnn_inference`` can drop it.
    """
    p = torch.sigmoid(logits)
    bg = p[:, -1:]
    fg = p[:, :-1] * torch.sigmoid(-logits[:, -1:])  # 1 - sigma(z_bg), without cancellation
    return torch.cat([fg, bg], dim=1)


class _EQLv2Stats(GradientStats):
    """Shared EQL v2 state: the all-reduced gradient accumulators of :class:`GradientStats` (``pos_neg``
    starts at 100, no clamp) and the q/r weight mapping (length C, float32)."""

    def __init__(self, num_classes: int, gamma: float = 12.0, mu: float = 0.8, alpha: float = 4.0):
        super().__init__(
            num_classes, init_ratio=100.0, what="EQL v2 statistics (pos_grad/neg_grad/pos_neg)"
        )
        self.gamma = float(gamma)
        self.mu = float(mu)
        self.alpha = float(alpha)

    def class_weights(self):
        """(neg_w, pos_w) for the C foreground classes: r = f(g), q = 1 + alpha (1 - f(g)), float32."""
        r = eqlv2_map(self.pos_neg.float(), self.gamma, self.mu)
        q = 1.0 + self.alpha * (1.0 - r)
        return r, q

    def plot_data(self) -> dict:
        """The per-class statistics the method plots draw (EQL v2 Fig. 1; the loss protocol's
        ``plot_data``, :func:`lt_detectron.visualization.plots.plot_class_statistics`): the ratio g_j and the
        weights q_j, r_j the loss uses next, each (C,)."""
        r, q = self.class_weights()
        return {
            "name": "eqlv2_ratios",
            "title": "EQL v2 gradient ratio per class (EQL v2 Fig. 1)",
            "ratio": self.pos_neg.detach().float().cpu(),
            "ratio_label": "g_j = pos_grad / neg_grad",
            "factors": {
                "q_j (positive weight) = 1 + alpha (1 - f(g_j))": q.detach().cpu(),
                "r_j (negative weight) = f(g_j)": r.detach().cpu(),
            },
            "factors_label": "EQL v2 weight",
            "params": "gamma=%g, mu=%g, alpha=%g" % (self.gamma, self.mu, self.alpha),
        }

    def extra_repr(self):
        return (
            f"num_classes={self.num_classes}, gamma={self.gamma}, mu={self.mu}, alpha={self.alpha}"
        )


def _eqlv2_kwargs(cfg) -> dict:
    e = cfg.MODEL.LT.EQLV2
    return dict(gamma=e.GAMMA, mu=e.MU, alpha=e.ALPHA)


@ROI_LOSS_REGISTRY.register("eqlv2")
class EQLv2Loss(ROILoss, _EQLv2Stats):
    """EQL v2 ROI classification loss. ``forward(logits (R, C+1), gt_classes (R,), batch=None) -> scalar``
    (sum / R). ``predict_probs``: :func:`objectness_scores`.

    The maths: docs/methods.md#eql-v2-on-roi-heads. Statistics update only when ``self.training``.
    Keyword-only: the classifier options of :class:`~lt_detectron.losses.base.ROILoss`.
    """

    default_prior_prob = 0.001

    def __init__(
        self,
        num_classes: int,
        gamma: float = 12.0,
        mu: float = 0.8,
        alpha: float = 4.0,
        *,
        classifier: str = "linear",
        cosine_scale: float = 20.0,
        prior_prob: float = -1.0,
    ):
        _EQLv2Stats.__init__(self, num_classes, gamma, mu, alpha)
        self._set_roi_options(num_classes, classifier, cosine_scale, prior_prob)

    @classmethod
    def from_config(cls, cfg, num_classes: int, class_stats=None) -> dict:
        return dict(super().from_config(cfg, num_classes, class_stats), **_eqlv2_kwargs(cfg))

    def get_weights(self, dtype=torch.float32):
        """(neg_w, pos_w), each (C+1,), with weight 1 for the background/objectness column."""
        r, q = self.class_weights()
        one = r.new_ones(1)
        return torch.cat([r, one]).to(dtype), torch.cat([q, one]).to(dtype)

    def forward(
        self, logits: torch.Tensor, gt_classes: torch.Tensor, batch: Optional[ROIBatch] = None
    ) -> torch.Tensor:
        self._check_logits(logits)
        neg_w, pos_w = self.get_weights()
        loss, pos_stat, neg_stat = fused_weighted_bce(
            logits, gt_classes, neg_w, pos_w, with_stats=self.training
        )
        if self.training:
            C = self.num_classes
            self._update(pos_stat[:C], neg_stat[:C])
        return loss

    def predict_probs(self, logits: torch.Tensor) -> torch.Tensor:
        return objectness_scores(logits)

    extra_repr = _EQLv2Stats.extra_repr


@DENSE_LOSS_REGISTRY.register("eqlv2")
class EQLv2FocalLoss(DenseLoss, _EQLv2Stats):
    """Dense EQL v2 on a sigmoid focal head (extension; docs/methods.md#eql-v2-on-dense-heads-extension).

    ``forward(logits (M, C), gt_classes (M,) in [0, C], C = background, batch=None) -> scalar``, reduction =
    sum of w * focal(z, onehot) over all entries (no normalisation). Rows must already exclude ignored
    locations. :meth:`heatmap`: the CenterNet form. Defaults: focal gamma 2, alpha 0.25; EQL gamma 12,
    mu 0.8, alpha 4.
    """

    def __init__(
        self, num_classes, gamma=12.0, mu=0.8, alpha=4.0, focal_gamma=2.0, focal_alpha=0.25
    ):
        _EQLv2Stats.__init__(self, num_classes, gamma, mu, alpha)
        self._set_dense_options(num_classes, focal_alpha, focal_gamma)

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
            num_classes=num_classes,
            focal_alpha=focal_alpha,
            focal_gamma=focal_gamma,
            **_eqlv2_kwargs(cfg),
        )

    def forward(
        self, logits: torch.Tensor, gt_classes: torch.Tensor, batch: Optional[DenseBatch] = None
    ) -> torch.Tensor:
        self._check_logits(logits)
        r, q = self.class_weights()
        # the focal loss with weight r on the negatives and q on the positives, and the statistics
        # sum_m y w sigma(-z), sum_m (1 - y) w sigma(z) from the same pass (weighted_focal.py)
        loss, pos_inc, neg_inc = fused_weighted_focal(
            logits, gt_classes, r, q, self.focal_alpha, self.focal_gamma, with_stats=self.training
        )
        if self.training:
            self._update(pos_inc, neg_inc)
        return loss

    def heatmap(
        self,
        logits: torch.Tensor,
        heat: torch.Tensor,
        batch: Optional[DenseBatch] = None,
        alpha: float = 2.0,
        beta: float = 4.0,
    ) -> torch.Tensor:
        """Summed penalty-reduced focal loss of (N, C, H, W) logits vs heat maps with the q/r channel
        weights: q on the peaks (heat == 1), r elsewhere; statistics updated in training
        (docs/methods.md#centernet-heat-map-forms)."""
        C = self.num_classes
        if logits.dim() != 4 or logits.shape[1] != C:
            raise ValueError(
                "EQLv2FocalLoss.heatmap expects logits (N, %d, H, W), got %s"
                % (C, tuple(logits.shape))
            )
        r, q = self.class_weights()
        y = heat.eq(1).float()
        w = (y * q.view(1, C, 1, 1) + (1 - y) * r.view(1, C, 1, 1)).detach()
        loss = penalty_reduced_focal_loss(logits, heat, alpha, beta, weight=w)
        if self.training:
            with torch.no_grad():
                z = logits.detach().float()
                pos_inc = (y * w * torch.sigmoid(-z)).sum(dim=(0, 2, 3))
                neg_inc = ((1 - y) * w * torch.sigmoid(z)).sum(dim=(0, 2, 3))
            self._update(pos_inc, neg_inc)
        return loss

    def extra_repr(self):
        return _EQLv2Stats.extra_repr(self) + ", focal_alpha=%g, focal_gamma=%g" % (
            self.focal_alpha,
            self.focal_gamma,
        )
