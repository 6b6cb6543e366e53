"""``LongTailFastRCNNOutputLayers``: Detectron2's box predictor with a long-tail classification loss.

The predictor holds a protocol loss (:class:`~lt_detectron.losses.base.ROILoss`, built by
:func:`~lt_detectron.losses.build.build_roi_loss` from ``MODEL.LT.ROI_LOSS``) and asks it, never
switching on its name:

* ``cls_loss.classifier_spec()``: the classification layer ``cls_score`` to build
  (:func:`~lt_detectron.modeling.classifiers.build_classifier`);
* ``cls_loss(scores, gt_classes, ROIBatch(...))``: the classification loss, given the ROIs per image,
  the GT classes of every image (passed by the ROI heads) and the classifier;
* ``cls_loss.predict_probs(scores)``: ``(R, C+1)`` probabilities with the background column last, so
  ``fast_rcnn_inference``, Mask R-CNN and Cascade R-CNN work unchanged;
* ``cls_loss.accuracy_logits(scores)``: what ``fast_rcnn/cls_accuracy`` is logged from.

The shipped losses:

=========  ===============================  ==========================================
loss       classifier logits                 ``predict_probs``
=========  ===============================  ==========================================
softmax    linear (or cosine), C+1           softmax
sigmoid    linear, C+1 (bg column unused),   sigmoid(z_fg), bg = 0
           bias prior 0.01                   (+ federated subset, BOFL column weights)
eqlv2      linear, C+1, bias prior 0.001     sigmoid(z_fg) * (1 - sigmoid(z_bg)), sigmoid(z_bg)
ecm        linear or cosine, C+1             same objectness product as EQL v2 (authors' code)
bags       linear, C+N+2 (grouped)           P(fg) * within-group softmax, P(bg) last
c2am       bias-free raw cosine, C+1         softmax(s cos)
seesaw     linear (or cosine), C+2:          softmax(z_cls) * P(object), P(background)
           C classes, then [object, bg]      (2-way softmax of the last two logits)
=========  ===============================  ==========================================

Everything else (box regression, inference) is Detectron2's ``FastRCNNOutputLayers``, except with
``TEST.LT.AP_PROTOCOL fixed``: inference then keeps, instead of ``TEST.DETECTIONS_PER_IMAGE`` per
image, every detection that can still be among its class's ``TEST.LT.TOPK_PER_CLASS`` best of the
dataset (:mod:`lt_detectron.modeling.topk_inference`; the running thresholds restart each time the
predictor is put in eval mode, i.e. at every ``inference_on_dataset``). With
``TEST.LT.CALIBRATION`` (NorCal, logit adjustment, tau-norm) ``predict_probs`` first calibrates the
logits (:mod:`lt_detectron.modeling.calibration`; the checkpointed weights are not changed).
"""

from typing import List, Optional, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, cat
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers

from ..compat import log_classification_stats
from ..data.epochs import with_iters_per_epoch
from ..losses import (
    ROIBatch,
    ROILoss,
    SoftmaxROILoss,
    build_roi_loss,
    check_logit_columns,
    train_class_stats,
)
from .calibration import Calibration, build_calibration
from .classifiers import LWSLinear, build_classifier, init_prior_bias
from .topk_inference import ClassTopKThresholds

__all__ = ["LongTailFastRCNNOutputLayers"]


def _lws_layer(layer: torch.nn.Module) -> LWSLinear:
    if type(layer) is not torch.nn.Linear:
        raise ValueError(
            "MODEL.LT.LWS needs a linear classifier, but this loss asks for %s: set MODEL.LT.LWS False "
            "or use a loss with a linear layer (MODEL.LT.CLASSIFIER linear)" % type(layer).__name__
        )
    return LWSLinear.from_linear(layer)


class LongTailFastRCNNOutputLayers(FastRCNNOutputLayers):
    """Fast R-CNN box predictor whose classification loss is a protocol :class:`ROILoss`.

    Keyword-only arguments besides Detectron2's: ``cls_loss``, the loss instance (built from the config
    by ``from_config``; user code may pass any :class:`ROILoss` for ``num_classes`` classes; default:
    softmax cross-entropy, Detectron2's loss); ``test_topk_per_class``: > 0 keeps that many
    detections per class over the dataset at inference, with no per-image cap (Fixed AP); 0 (default):
    Detectron2's inference; ``calibration``: a test-time
    :class:`~lt_detectron.modeling.calibration.Calibration` of the logits, or None (default);
    ``lws``: ``cls_score`` becomes an :class:`LWSLinear` (learnable weight scaling; a linear
    classifier only).
    """

    @configurable
    def __init__(
        self,
        input_shape: ShapeSpec,
        *,
        cls_loss: Optional[ROILoss] = None,
        test_topk_per_class: int = 0,
        calibration: Optional[Calibration] = None,
        lws: bool = False,
        **kwargs,
    ):
        super().__init__(input_shape, **kwargs)
        C = self.num_classes
        # per-class running thresholds of Fixed AP inference (state of one evaluation, not checkpointed)
        self.class_topk = (
            ClassTopKThresholds(C, test_topk_per_class) if test_topk_per_class > 0 else None
        )
        if cls_loss is None:
            cls_loss = SoftmaxROILoss(C)
        if not isinstance(cls_loss, ROILoss):
            raise TypeError(
                "cls_loss must be an lt_detectron.losses.ROILoss, got %s" % type(cls_loss).__name__
            )
        if cls_loss.num_classes != C:
            raise ValueError(
                "cls_loss has %d classes but the predictor has %d" % (cls_loss.num_classes, C)
            )
        self.cls_loss = cls_loss  # a submodule: its buffers are checkpointed with the model
        spec = cls_loss.classifier_spec()
        in_features = self.cls_score.in_features
        if (
            spec.kind == "linear"
            and spec.num_logits == C + 1
            and spec.bias
            and spec.init_std is None
        ):
            # Detectron2's own layer (same init, same random stream); only the bias prior may change
            if spec.prior_prob > 0:
                init_prior_bias(self.cls_score, spec.prior_prob)
        else:
            self.cls_score = build_classifier(spec, in_features)
        if lws:
            self.cls_score = _lws_layer(self.cls_score)
        check_logit_columns(cls_loss, self.cls_score, "the box predictor's cls_score")
        if calibration is not None:
            calibration.check(cls_loss, self.cls_score)
        self.calibration = calibration  # holds no checkpointed state

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        C = cfg.MODEL.ROI_HEADS.NUM_CLASSES
        stats = train_class_stats(cfg, C, "MODEL.ROI_HEADS.NUM_CLASSES")
        ret["cls_loss"] = build_roi_loss(with_iters_per_epoch(cfg, None), C, stats)
        ret["calibration"] = build_calibration(cfg, C, stats)
        ret["lws"] = cfg.MODEL.LT.LWS
        ret["test_topk_per_class"] = (
            cfg.TEST.LT.TOPK_PER_CLASS if cfg.TEST.LT.AP_PROTOCOL == "fixed" else 0
        )
        return ret

    def reset_classifier(self) -> None:
        """Re-initialise ``cls_score`` in place (the parameters keep their identity, so an optimizer
        built already still holds them), as it was initialised when built (cRT's fresh classifier,
        ``MODEL.LT.REINIT_CLS``)."""
        fresh = build_classifier(self.cls_loss.classifier_spec(), self.cls_score.in_features)
        if isinstance(self.cls_score, LWSLinear):
            fresh = LWSLinear.from_linear(fresh)
        self.cls_score.load_state_dict(fresh.state_dict())

    # ------------------------------------------------------------------ training
    def losses(
        self, predictions, proposals, gt_classes_per_image: Optional[Sequence[torch.Tensor]] = None
    ):
        """Detectron2's losses with ``loss_cls`` from ``self.cls_loss``.

        Args:
            predictions, proposals: as Detectron2's ``FastRCNNOutputLayers.losses``.
            gt_classes_per_image: the classes of the GT objects of every image (the targets', not the
                sampled ROIs'); the ROI heads pass them (BOFL counts GT objects per image).
        """
        scores, proposal_deltas = predictions
        gt_classes = (
            cat([p.gt_classes for p in proposals], dim=0)
            if len(proposals)
            else torch.empty(0, dtype=torch.long, device=scores.device)
        )
        log_classification_stats(self.cls_loss.accuracy_logits(scores), gt_classes)
        if len(proposals):
            proposal_boxes = cat([p.proposal_boxes.tensor for p in proposals], dim=0)
            gt_boxes = cat(
                [(p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes).tensor for p in proposals],
                dim=0,
            )
        else:
            proposal_boxes = gt_boxes = torch.empty((0, 4), device=proposal_deltas.device)
        batch = ROIBatch(
            rois_per_image=[len(p) for p in proposals],
            gt_classes_per_image=gt_classes_per_image,
            classifier=self.cls_score,
        )
        losses = {
            "loss_cls": self.cls_loss(scores, gt_classes, batch),
            "loss_box_reg": self.box_reg_loss(
                proposal_boxes, gt_boxes, proposal_deltas, gt_classes
            ),
        }
        return {k: v * self.loss_weight.get(k, 1.0) for k, v in losses.items()}

    # ------------------------------------------------------------------ inference
    def predict_probs(
        self, predictions: Tuple[torch.Tensor, torch.Tensor], proposals
    ) -> List[torch.Tensor]:
        """Per image ``(R_i, C+1)`` probabilities, background last (``cls_loss.predict_probs`` of the
        logits, calibrated first when ``self.calibration`` is set)."""
        scores, _ = predictions
        if self.calibration is not None:
            scores = self.calibration(scores, self.cls_score)
        num_inst_per_image = [len(p) for p in proposals]
        return self.cls_loss.predict_probs(scores).split(num_inst_per_image, dim=0)

    def train(self, mode: bool = True):
        if not mode and self.class_topk is not None:
            self.class_topk.reset()  # a new evaluation starts
        return super().train(mode)

    def inference(self, predictions: Tuple[torch.Tensor, torch.Tensor], proposals):
        """Detectron2's inference, or with ``test_topk_per_class`` the top-k-per-class selection."""
        if self.class_topk is None:
            return super().inference(predictions, proposals)
        boxes = self.predict_boxes(predictions, proposals)
        scores = self.predict_probs(predictions, proposals)
        image_shapes = [x.image_size for x in proposals]
        return self.class_topk.inference(
            boxes, scores, image_shapes, self.test_score_thresh, self.test_nms_thresh
        )
