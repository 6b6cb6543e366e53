"""The dense classification loss of RetinaNet / FCOS / CenterNet, chosen by ``MODEL.LT.DENSE_LOSS``.

This module only turns config + class statistics into a loss module and dispatches; the math of each
method lives in :mod:`lt_detectron.losses` (one implementation per method):

=========  ==========================================  =============================================
name       focal-head form (RetinaNet, FCOS)           heat-map form (CenterNet, penalty-reduced)
=========  ==========================================  =============================================
focal      ``sigmoid_focal_loss`` (alpha_t, gamma)     penalty-reduced focal (alpha=2, beta=4)
bofl       ``bofl_focal_loss``: per-channel w_{i,k}     same w_{i,k} per channel on the penalty-reduced
           on top of alpha_t (k = image or batch)      focal (k = one image, eta 0.8)
eqlv2      ``EQLv2FocalLoss`` (C channels, no           EQL v2 q/r channel weights from the same
           objectness column, stats all-reduced)        buffers; positives = heat-map peaks [interp]
ecm        ``ECMFocalLoss`` (focal on sigma(2z+delta),  penalty-reduced focal on 2z + delta, times m_c
           m_c, fg counts only)                         [interp]
=========  ==========================================  =============================================

All forms return a **sum** (no normalisation): each detector divides by its own normaliser (RetinaNet
the EMA of positive anchors, FCOS the number of positive locations, CenterNet the number of objects),
so the BOFL weights are never normalised away. BOFL's lambda is a pure function of the iteration:
``lambda = schedule(training_progress(iteration).epoch)`` (the epoch length is set by the trainer), and
it is logged as ``bofl/lambda`` at every training step. Inference always uses sigma(z) (for ECM as in
the authors' code: no factor 2, no margins).
"""
from typing import List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...engine.progress import training_progress
from ...losses.bofl import BOFLFocalLoss, bofl_focal_loss
from ...losses.ecm import ECMFocalLoss
from ...losses.eqlv2 import EQLv2FocalLoss
from ...losses.focal import sigmoid_focal_loss

__all__ = [
    "DENSE_LOSSES",
    "DenseClassificationLoss",
    "build_dense_cls_loss",
    "penalty_reduced_focal_loss",
]

DENSE_LOSSES = ("focal", "bofl", "eqlv2", "ecm")


def penalty_reduced_focal_loss(logits, heat, alpha: float = 2.0, beta: float = 4.0, weight=None):
    """CenterNet/CornerNet's penalty-reduced pixel-wise focal loss, **summed** (not normalised).

    Positives are the pixels with ``heat == 1``:  -(1 - p)^alpha log p;  other pixels:
    -(1 - heat)^beta p^alpha log(1 - p).  log p is computed as logsigmoid (no clamp), so logits in
    [-80, 80] stay finite. ``weight`` (broadcastable to ``logits``, e.g. (N, C, 1, 1)) multiplies both
    terms per element (BOFL / EQL v2 / ECM channel weights).
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


def _log_scalar(name, value):
    try:
        from detectron2.utils.events import get_event_storage

        get_event_storage().put_scalar(name, value, smoothing_hint=False)
    except AssertionError:  # no event storage: not in a training loop
        pass


class DenseClassificationLoss(nn.Module):
    """Dispatch to the configured dense classification loss (a submodule of the meta-architecture, so
    EQL v2's buffers are checkpointed: ``cls_loss.loss.{pos_grad,neg_grad,pos_neg}``).

    Args:
        name: focal | bofl | eqlv2 | ecm.
        num_classes: C (no background channel).
        instance_counts: (C,) training instance counts (bofl, ecm).
        focal_alpha, focal_gamma: the detector's focal parameters (all focal-head forms).
        bofl: dict(kappa, eta, batch_counts in {"image", "batch", "none"}, total_epochs,
            deferred_epochs, per_iteration) for ``name == "bofl"``.
        eqlv2: dict(gamma, mu, alpha) for ``name == "eqlv2"``.
    """

    def __init__(
        self,
        name: str = "focal",
        num_classes: int = 80,
        *,
        instance_counts=None,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        bofl: Optional[dict] = None,
        eqlv2: Optional[dict] = None,
    ):
        super().__init__()
        name = str(name).lower()
        if name not in DENSE_LOSSES:
            raise ValueError("MODEL.LT.DENSE_LOSS must be one of %s, got %r" % ("|".join(DENSE_LOSSES), name))
        self.name = name
        self.num_classes = int(num_classes)
        self.focal_alpha = float(focal_alpha)
        self.focal_gamma = float(focal_gamma)
        self.loss = None
        self.batch_counts = None
        if name in ("bofl", "ecm"):
            if instance_counts is None:
                raise ValueError("MODEL.LT.DENSE_LOSS %s needs per-class instance counts (DATASETS.TRAIN)" % name)
            if len(instance_counts) != self.num_classes:
                raise ValueError(
                    "%d instance counts for %d classes (NUM_CLASSES and the dataset disagree)"
                    % (len(instance_counts), self.num_classes)
                )
        if name == "bofl":
            b = dict(kappa=1.0, eta=None, batch_counts="batch", total_epochs=1, deferred_epochs=0, per_iteration=False)
            b.update(bofl or {})
            mode = str(b["batch_counts"]).lower()
            if mode not in ("image", "batch", "none"):
                raise ValueError("MODEL.LT.BOFL.BATCH_COUNTS must be image | batch | none, got %r" % mode)
            self.batch_counts = mode
            eta = None if (mode == "none" or b["eta"] is None) else float(b["eta"])
            self.loss = BOFLFocalLoss(
                instance_counts,
                total_epochs=b["total_epochs"],
                deferred_epochs=b["deferred_epochs"],
                kappa=b["kappa"],
                eta=eta,
                per_image=(mode == "image"),
                per_iteration=b["per_iteration"],
                alpha=focal_alpha,
                gamma=focal_gamma,
            )
        elif name == "eqlv2":
            e = dict(gamma=12.0, mu=0.8, alpha=4.0)
            e.update(eqlv2 or {})
            self.loss = EQLv2FocalLoss(
                self.num_classes, gamma=e["gamma"], mu=e["mu"], alpha=e["alpha"],
                focal_gamma=focal_gamma, focal_alpha=focal_alpha,
            )
        elif name == "ecm":
            self.loss = ECMFocalLoss(instance_counts, gamma=focal_gamma, alpha=focal_alpha)

    def extra_repr(self):
        s = "name=%s, num_classes=%d" % (self.name, self.num_classes)
        if self.name == "bofl":
            sch = self.loss.schedule
            s += ", kappa=%g, eta=%s, batch_counts=%s, total_epochs=%g, deferred_epochs=%g" % (
                self.loss.kappa, self.loss.eta, self.batch_counts, sch.total_epochs, sch.deferred_epochs)
        return s

    # ------------------------------------------------------------------ BOFL schedule
    def current_lambda(self, iteration: Optional[int] = None) -> float:
        """BOFL's lambda at ``iteration`` (default: the event storage's iteration); 0 for other losses."""
        if self.name != "bofl":
            return 0.0
        return float(self.loss.schedule(training_progress(iteration).epoch))

    def bofl_weights(self, gt_classes_list: Sequence[torch.Tensor], iteration: Optional[int] = None):
        """BOFL per-channel weights, (K, C) per image or (1, C) per batch, and lambda (logged in training)."""
        epoch = training_progress(iteration).epoch
        lam = float(self.loss.schedule(epoch))
        if self.training:
            _log_scalar("bofl/lambda", lam)
        w = self.loss.class_weights(epoch, [g.detach() for g in gt_classes_list])
        return w, lam

    # ------------------------------------------------------------------ focal heads
    def focal(
        self,
        logits: torch.Tensor,
        gt_labels: torch.Tensor,
        image_index: Optional[torch.Tensor] = None,
        gt_classes_list: Optional[List[torch.Tensor]] = None,
    ) -> torch.Tensor:
        """Summed loss of (M, C) logits of valid locations with labels (M,) in [0, C] (C = background).

        ``image_index`` (M,) and ``gt_classes_list`` (per-image GT labels) are needed by BOFL.
        """
        C = self.num_classes
        gt_labels = gt_labels.long()
        if self.name == "eqlv2":
            return self.loss(logits, gt_labels)
        target = F.one_hot(gt_labels, C + 1)[:, :C].to(logits.dtype)
        if self.name == "focal":
            return sigmoid_focal_loss(logits, target, self.focal_alpha, self.focal_gamma, reduction="sum")
        if self.name == "ecm":
            return self.loss(logits, target)
        # bofl
        if gt_classes_list is None:
            raise ValueError("BOFL needs the per-image GT classes (gt_classes_list)")
        w, _ = self.bofl_weights(gt_classes_list)
        w = w.to(device=logits.device, dtype=logits.dtype)
        return bofl_focal_loss(logits, target, w, image_index, self.focal_alpha, self.focal_gamma, reduction="sum")

    # ------------------------------------------------------------------ heat maps (CenterNet)
    def heatmap(
        self,
        logits: torch.Tensor,
        heat: torch.Tensor,
        gt_classes_list: Optional[List[torch.Tensor]] = None,
        alpha: float = 2.0,
        beta: float = 4.0,
    ) -> torch.Tensor:
        """Summed penalty-reduced focal loss of (N, C, H, W) logits vs Gaussian heat maps, with the
        configured method's per-channel weights (see the module table)."""
        N, C = logits.shape[:2]
        if self.name == "focal":
            return penalty_reduced_focal_loss(logits, heat, alpha, beta)
        if self.name == "bofl":
            if gt_classes_list is None:
                raise ValueError("BOFL needs the per-image GT classes (gt_classes_list)")
            w, _ = self.bofl_weights(gt_classes_list)
            w = w.to(device=logits.device, dtype=torch.float32)
            return penalty_reduced_focal_loss(logits, heat, alpha, beta, weight=w[:, :, None, None])
        if self.name == "ecm":
            x = 2.0 * logits.float() + self.loss.margins.view(1, C, 1, 1)
            return penalty_reduced_focal_loss(x, heat, alpha, beta, weight=self.loss.weights.view(1, C, 1, 1))
        # eqlv2: q on peaks, r elsewhere, statistics of the re-weighted BCE gradients (|sigma - y|, y = peak)
        r, q = self.loss.class_weights()
        y = heat.eq(1).float()
        w = (y * q.view(1, C, 1, 1) + (1 - y) * r.view(1, C, 1, 1)).detach()
        loss = penalty_reduced_focal_loss(logits, heat, alpha, beta, weight=w)
        if self.loss.training:
            with torch.no_grad():
                z = logits.detach().float()
                pos_inc = (y * w * torch.sigmoid(-z)).sum(dim=(0, 2, 3))
                neg_inc = ((1 - y) * w * torch.sigmoid(z)).sum(dim=(0, 2, 3))
            self.loss._update(pos_inc, neg_inc)  # all-reduced accumulation of lt_detectron.losses.eqlv2
        return loss

    @staticmethod
    def predict_probs(logits: torch.Tensor) -> torch.Tensor:
        """Scores at inference: sigma(z) for every method."""
        return torch.sigmoid(logits)


def build_dense_cls_loss(cfg, num_classes: int, num_classes_key: str, focal_alpha=0.25, focal_gamma=2.0):
    """Build the :class:`DenseClassificationLoss` of ``cfg.MODEL.LT.DENSE_LOSS``.

    BOFL and ECM read the training instance counts from the class-statistics registry
    (``get_class_stats(cfg.DATASETS.TRAIN)``) and check ``num_classes`` against it.
    """
    from ...class_stats import check_num_classes, get_class_stats

    lt = cfg.MODEL.LT
    name = str(lt.DENSE_LOSS).lower()
    counts = None
    bofl = eqlv2 = None
    if name in ("bofl", "ecm"):
        if not cfg.DATASETS.TRAIN:
            raise ValueError("MODEL.LT.DENSE_LOSS %s needs DATASETS.TRAIN for the class statistics" % name)
        stats = get_class_stats(cfg.DATASETS.TRAIN)
        check_num_classes(num_classes, stats, num_classes_key)
        counts = stats.instance_counts
    if name == "bofl":
        from ...engine.progress import bofl_settings_from_cfg

        bofl = bofl_settings_from_cfg(cfg)
    elif name == "eqlv2":
        eqlv2 = dict(gamma=lt.EQLV2.GAMMA, mu=lt.EQLV2.MU, alpha=lt.EQLV2.ALPHA)
    return DenseClassificationLoss(
        name, num_classes, instance_counts=counts, focal_alpha=focal_alpha, focal_gamma=focal_gamma,
        bofl=bofl, eqlv2=eqlv2,
    )
