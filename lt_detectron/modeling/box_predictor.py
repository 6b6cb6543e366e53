"""``LongTailFastRCNNOutputLayers``: Detectron2's box predictor with long-tail classification losses.

The predictor translates config into one of the pure-torch losses of ``lt_detectron.losses``
and keeps Detectron2's contract: ``predict_probs`` returns ``(R_i, C+1)`` probabilities with
the background column last, so ``fast_rcnn_inference``, Mask R-CNN and Cascade R-CNN work
unchanged.

=========  ===============================  ==========================================
loss       classifier logits                 ``predict_probs``
=========  ===============================  ==========================================
softmax    linear, C+1                       softmax
sigmoid    linear, C+1 (bg column unused)    sigmoid(z_fg), bg = 0  (+ BOFL column weights)
eqlv2      linear, C+1, bias prior 0.001     sigmoid(z_fg) * (1 - sigmoid(z_bg)), sigmoid(z_bg)
ecm        linear or cosine, C+1             same objectness product as EQL v2 (authors' code)
bags       linear, C+N+2 (grouped)           P(fg) * within-group softmax, P(bg) last
c2am       bias-free cosine, C+1             softmax(s cos)
=========  ===============================  ==========================================
"""
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, cat, cross_entropy
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers, _log_classification_stats
from detectron2.utils.events import get_event_storage

from ..class_stats import check_num_classes, get_class_stats
from ..losses.bags import BAGSLoss, bags_scores
from ..losses.bofl import BOFLSchedule, bofl_class_weights, bofl_dataset_weights
from ..losses.c2am import C2AMLoss
from ..losses.ecm import ECMLoss
from ..losses.federated import fed_loss_class_weights, fed_loss_mask
from ..losses.eqlv2 import EQLv2Loss, objectness_scores
from ..losses.sigmoid import sigmoid_bce_loss
from ..engine.progress import training_progress
from .classifiers import CosineClassifier, init_prior_bias

__all__ = ["LongTailFastRCNNOutputLayers", "ROI_LOSSES"]


ROI_LOSSES = ("softmax", "sigmoid", "eqlv2", "ecm", "bags", "c2am")
# classifier prior probability used when MODEL.LT.PRIOR_PROB < 0 ("per-method default")
_DEFAULT_PRIOR = {"eqlv2": 0.001, "sigmoid": 0.01}


def check_roi_loss(name: str) -> str:
    name = name.lower()
    if name not in ROI_LOSSES:
        raise ValueError(
            "unknown MODEL.LT.ROI_LOSS %r; choose one of %s" % (name, ", ".join(ROI_LOSSES))
        )
    return name


class LongTailFastRCNNOutputLayers(FastRCNNOutputLayers):
    """Fast R-CNN box predictor whose classification loss comes from ``lt_detectron.losses``.

    Keyword-only arguments (besides Detectron2's): ``loss`` (one of :data:`ROI_LOSSES`),
    ``instance_counts`` (``(C,)`` training instance counts from the class-statistics
    registry; needed by ECM, BAGS and BOFL), ``classifier`` (``linear``/``cosine``),
    ``cosine_scale``, ``prior_prob`` and ``loss_kwargs`` (passed to the loss).
    """

    @configurable
    def __init__(
        self,
        input_shape: ShapeSpec,
        *,
        loss: str = "softmax",
        instance_counts: Optional[Sequence[int]] = None,
        classifier: str = "linear",
        cosine_scale: float = 20.0,
        prior_prob: float = -1.0,
        loss_kwargs: Optional[Dict] = None,
        bofl: Optional[Dict] = None,
        use_fed_loss: bool = False,
        fed_loss_num_classes: int = 50,
        fed_loss_weights: Optional[Sequence[float]] = None,
        **kwargs,
    ):
        super().__init__(input_shape, **kwargs)
        self.loss_name = check_roi_loss(loss)
        loss_kwargs = dict(loss_kwargs or {})
        C = self.num_classes
        counts = None
        if instance_counts is not None:
            counts = torch.as_tensor(np.asarray(instance_counts), dtype=torch.float64)
            if counts.numel() != C:
                raise ValueError(
                    "instance_counts has %d entries but the predictor has %d classes" % (counts.numel(), C)
                )
        if self.loss_name in ("ecm", "bags") or (bofl and bofl.get("enabled")):
            if counts is None:
                raise ValueError("the %r loss needs per-class instance_counts from the class-statistics registry" % self.loss_name)
        in_features = self.cls_score.in_features
        # ---- classifier
        if self.loss_name == "c2am":
            self.cls_score = CosineClassifier(in_features, C + 1, scale=None, bias=False)
        elif self.loss_name == "bags":
            self.cls_loss = BAGSLoss(counts, **loss_kwargs)
            self.cls_score = nn.Linear(in_features, self.cls_loss.layout.num_logits)
            nn.init.normal_(self.cls_score.weight, std=0.01)
            nn.init.constant_(self.cls_score.bias, 0.0)
        elif classifier == "cosine":
            self.cls_score = CosineClassifier(in_features, C + 1, scale=cosine_scale, bias=True)
        elif classifier != "linear":
            raise ValueError("unknown MODEL.LT.CLASSIFIER %r; choose linear or cosine" % classifier)
        if prior_prob < 0:
            prior_prob = _DEFAULT_PRIOR.get(self.loss_name, 0.0)
        if prior_prob > 0 and getattr(self.cls_score, "bias", None) is not None:
            init_prior_bias(self.cls_score, prior_prob)
        # ---- loss module (its buffers are checkpointed with the model)
        if self.loss_name == "eqlv2":
            self.cls_loss = EQLv2Loss(C, **loss_kwargs)
        elif self.loss_name == "ecm":
            self.cls_loss = ECMLoss(counts, **loss_kwargs)
        elif self.loss_name == "c2am":
            self.cls_loss = C2AMLoss(**loss_kwargs)
        # ---- federated loss (sigmoid classifier): train on the batch's GT classes + sampled ones
        self.use_fed_loss = bool(use_fed_loss)
        if self.use_fed_loss:
            if self.loss_name != "sigmoid":
                raise ValueError("MODEL.ROI_BOX_HEAD.USE_FED_LOSS needs the sigmoid classifier (got %r)" % self.loss_name)
            if fed_loss_weights is None or len(fed_loss_weights) != C:
                raise ValueError("the federated loss needs (C,) sampling weights from the class statistics")
            self.fed_loss_num_classes = int(fed_loss_num_classes)
            self.register_buffer("fed_loss_weights", torch.as_tensor(fed_loss_weights, dtype=torch.float32), persistent=False)
        # ---- BOFL channel weights for a sigmoid classifier (extension, see METHODS.md 1d)
        self.bofl = None
        if bofl and bofl.get("enabled"):
            if bofl["batch_counts"] not in ("image", "batch", "none"):
                raise ValueError("MODEL.LT.BOFL.BATCH_COUNTS must be image, batch or none, got %r" % bofl["batch_counts"])
            if self.loss_name != "sigmoid":
                raise ValueError("MODEL.LT.BOFL on ROI heads needs MODEL.LT.ROI_LOSS sigmoid (got %r)" % self.loss_name)
            self.bofl = dict(bofl)
            self.register_buffer("bofl_alpha", bofl_dataset_weights(counts).float(), persistent=False)
            self.bofl_schedule = BOFLSchedule(bofl["total_epochs"], bofl["deferred_epochs"], bofl["per_iteration"])

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        lt = cfg.MODEL.LT
        loss = "sigmoid" if (cfg.MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE and lt.ROI_LOSS == "softmax") else lt.ROI_LOSS
        loss = check_roi_loss(loss)
        stats = get_class_stats(cfg.DATASETS.TRAIN) if cfg.DATASETS.TRAIN else None
        if stats is not None:
            check_num_classes(cfg.MODEL.ROI_HEADS.NUM_CLASSES, stats, "MODEL.ROI_HEADS.NUM_CLASSES")
        loss_kwargs = {}
        if loss == "eqlv2":
            loss_kwargs = dict(gamma=lt.EQLV2.GAMMA, mu=lt.EQLV2.MU, alpha=lt.EQLV2.ALPHA)
        elif loss == "ecm":
            loss_kwargs = dict(bg_fg_ratio=lt.ECM.BG_FG_RATIO, measure_iters=lt.ECM.MEASURE_ITERS)
        elif loss == "bags":
            loss_kwargs = dict(bin_edges=tuple(lt.BAGS.BIN_EDGES), beta=lt.BAGS.BETA)
        elif loss == "c2am":
            loss_kwargs = dict(scale=lt.C2AM.SCALE, alpha=lt.C2AM.ALPHA, background_margin=lt.C2AM.BACKGROUND_MARGIN)
        bofl = None
        if lt.BOFL.ENABLED:
            from ..engine.progress import bofl_settings_from_cfg

            bofl = dict(enabled=True, **bofl_settings_from_cfg(cfg))
        use_fed = cfg.MODEL.ROI_BOX_HEAD.USE_FED_LOSS
        ret.update(
            use_fed_loss=use_fed,
            fed_loss_num_classes=cfg.MODEL.ROI_BOX_HEAD.FED_LOSS_NUM_CLASSES,
            fed_loss_weights=(
                fed_loss_class_weights(stats.image_counts, cfg.MODEL.ROI_BOX_HEAD.FED_LOSS_FREQ_WEIGHT_POWER)
                if use_fed and stats is not None else None
            ),
            loss=loss,
            instance_counts=None if stats is None else stats.instance_counts,
            classifier=lt.CLASSIFIER,
            cosine_scale=lt.COSINE_SCALE,
            prior_prob=lt.PRIOR_PROB,
            loss_kwargs=loss_kwargs,
            bofl=bofl,
        )
        return ret

    # ------------------------------------------------------------------ training
    def losses(self, predictions, proposals):
        scores, proposal_deltas = predictions
        gt_classes = (
            cat([p.gt_classes for p in proposals], dim=0) if len(proposals) else torch.empty(0, dtype=torch.long, device=scores.device)
        )
        if self.loss_name != "bags":
            _log_classification_stats(scores, gt_classes)
        if len(proposals):
            proposal_boxes = cat([p.proposal_boxes.tensor for p in proposals], dim=0)
            gt_boxes = cat(
                [(p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes).tensor for p in proposals], dim=0
            )
        else:
            proposal_boxes = gt_boxes = torch.empty((0, 4), device=proposal_deltas.device)
        losses = {
            "loss_cls": self.classification_loss(scores, gt_classes, proposals),
            "loss_box_reg": self.box_reg_loss(proposal_boxes, gt_boxes, proposal_deltas, gt_classes),
        }
        return {k: v * self.loss_weight.get(k, 1.0) for k, v in losses.items()}

    def classification_loss(self, scores, gt_classes, proposals=None):
        """The configured classification loss on ``scores`` ``(R, K)`` and ``gt_classes`` ``(R,)``."""
        name = self.loss_name
        if name == "softmax":
            return cross_entropy(scores, gt_classes, reduction="mean")
        if name == "sigmoid":
            weights = self._bofl_weights(gt_classes, proposals, scores) if self.bofl else None
            if self.use_fed_loss:
                mask = fed_loss_mask(gt_classes, self.fed_loss_num_classes, self.num_classes, self.fed_loss_weights)
                weights = mask.to(scores.dtype) if weights is None else weights * mask
            return sigmoid_bce_loss(scores, gt_classes, class_weights=weights)
        if name == "c2am":
            return self.cls_loss(scores, self.cls_score.weight_norms(), gt_classes)
        return self.cls_loss(scores, gt_classes)

    def _bofl_weights(self, gt_classes, proposals, scores):
        """(R, C) BOFL channel weights for the ROI batch (per image or per local batch).

        The batch factor counts GT *objects* per image (``batch_gt_classes``, set by our ROI
        heads from the targets), not sampled ROIs, as BOFL's n_{i,k}.
        """
        lam = self.bofl_schedule(training_progress().epoch)
        try:
            get_event_storage().put_scalar("bofl/lambda", lam, smoothing_hint=False)
        except AssertionError:  # called outside a training loop (tests, user code)
            pass
        C = self.num_classes
        kappa = self.bofl["kappa"]
        if self.bofl["batch_counts"] == "none":
            w = bofl_class_weights(self.bofl_alpha, lam, kappa=kappa)
            return w.expand(scores.shape[0], C)
        gts = getattr(self, "batch_gt_classes", None)
        if gts is None or len(gts) != len(proposals):
            raise RuntimeError(
                "BOFL batch counts need the GT classes of the batch: use LongTailROIHeads or "
                "LongTailCascadeROIHeads, or set predictor.batch_gt_classes before losses()"
            )
        if self.bofl["batch_counts"] == "image":
            counts = torch.stack([torch.bincount(g, minlength=C) for g in gts]).to(self.bofl_alpha.dtype)
            w = bofl_class_weights(self.bofl_alpha, lam, kappa=kappa, eta=self.bofl["eta"], batch_counts=counts)
            sizes = torch.as_tensor([len(p) for p in proposals], device=w.device)
            return torch.repeat_interleave(w, sizes, dim=0)
        counts = torch.bincount(torch.cat(list(gts)), minlength=C).to(self.bofl_alpha.dtype).reshape(1, C)
        w = bofl_class_weights(self.bofl_alpha, lam, kappa=kappa, eta=self.bofl["eta"], batch_counts=counts)
        return w.expand(scores.shape[0], C)

    # ------------------------------------------------------------------ inference
    def predict_probs(self, predictions: Tuple[torch.Tensor, torch.Tensor], proposals):
        scores, _ = predictions
        num_inst_per_image = [len(p) for p in proposals]
        name = self.loss_name
        if name == "softmax":
            probs = F.softmax(scores, dim=-1)
        elif name == "sigmoid":
            probs = torch.sigmoid(scores)
            probs = torch.cat([probs[:, :-1], torch.zeros_like(probs[:, -1:])], dim=1)
        elif name in ("eqlv2", "ecm"):
            probs = objectness_scores(scores)
        elif name == "bags":
            probs = bags_scores(scores, self.cls_loss.layout)
        elif name == "c2am":
            probs = F.softmax(self.cls_loss.scale * scores, dim=-1)
        return probs.split(num_inst_per_image, dim=0)
