"""ROI heads whose box predictor is :class:`LongTailFastRCNNOutputLayers`.

Detectron2 has no registry for box predictors, so (as its own projects do) we register
``StandardROIHeads`` / ``CascadeROIHeads`` subclasses that build ours. Each cascade stage gets
its own predictor, hence its own loss module and state (EQL v2 statistics are per stage).
Mask and keypoint heads are Detectron2's; at inference the mask branch computes only the predicted
classes' masks (``ClassSelectedMaskMixin``, class_selected_masks.py: same masks, without the (detections x
classes) tensor of all class masks).

In training the heads pass the classes of every image's GT objects to the predictor's ``losses``
(``gt_classes_per_image``; BOFL counts GT objects, not sampled ROIs). That is the only change to
Detectron2's ``forward`` / ``_forward_box``, whose training branches are repeated here with that
argument added.
"""

from typing import Dict, List, Optional

import torch
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, CascadeROIHeads, StandardROIHeads
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import get_event_storage

from .box_predictor import LongTailFastRCNNOutputLayers
from .class_selected_masks import ClassSelectedMaskMixin

__all__ = ["LongTailROIHeads", "LongTailCascadeROIHeads"]


def _gt_classes(targets: Optional[List[Instances]]):
    return None if targets is None else [t.gt_classes for t in targets]


@ROI_HEADS_REGISTRY.register()
class LongTailROIHeads(ClassSelectedMaskMixin, StandardROIHeads):
    """``StandardROIHeads`` with the long-tail box predictor (``MODEL.LT.ROI_LOSS``)."""

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        ret["box_predictor"] = LongTailFastRCNNOutputLayers(cfg, ret["box_head"].output_shape)
        return ret

    def forward(
        self, images, features: Dict[str, torch.Tensor], proposals: List[Instances], targets=None
    ):
        if not self.training:
            return super().forward(images, features, proposals, targets)
        assert targets, "'targets' argument is required during training"
        proposals = self.label_and_sample_proposals(proposals, targets)
        losses = self._forward_box(features, proposals, _gt_classes(targets))
        losses.update(self._forward_mask(features, proposals))
        losses.update(self._forward_keypoint(features, proposals))
        return proposals, losses

    def _forward_box(
        self,
        features: Dict[str, torch.Tensor],
        proposals: List[Instances],
        gt_classes_per_image=None,
    ):
        """Detectron2's ``_forward_box``; in training the predictor's losses get ``gt_classes_per_image``."""
        if not self.training:
            return super()._forward_box(features, proposals)
        features = [features[f] for f in self.box_in_features]
        box_features = self.box_head(
            self.box_pooler(features, [x.proposal_boxes for x in proposals])
        )
        predictions = self.box_predictor(box_features)
        del box_features
        losses = self.box_predictor.losses(
            predictions, proposals, gt_classes_per_image=gt_classes_per_image
        )
        # proposals is modified in-place below, so losses must be computed first.
        if self.train_on_pred_boxes:
            with torch.no_grad():
                pred_boxes = self.box_predictor.predict_boxes_for_gt_classes(predictions, proposals)
                for proposals_per_image, pred_boxes_per_image in zip(proposals, pred_boxes):
                    proposals_per_image.proposal_boxes = Boxes(pred_boxes_per_image)
        return losses


@ROI_HEADS_REGISTRY.register()
class LongTailCascadeROIHeads(ClassSelectedMaskMixin, CascadeROIHeads):
    """``CascadeROIHeads`` with one long-tail box predictor (and loss state) per stage."""

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        weights = cfg.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS
        ret["box_predictors"] = [
            LongTailFastRCNNOutputLayers(
                cfg, head.output_shape, box2box_transform=Box2BoxTransform(weights=w)
            )
            for head, w in zip(ret["box_heads"], weights)
        ]
        return ret

    def _forward_box(self, features, proposals, targets=None):
        """Detectron2's cascade ``_forward_box``; in training every stage's losses get the GT classes."""
        if not self.training:
            return super()._forward_box(features, proposals, targets)
        features = [features[f] for f in self.box_in_features]
        head_outputs = []  # (predictor, predictions, proposals)
        prev_pred_boxes = None
        image_sizes = [x.image_size for x in proposals]
        for k in range(self.num_cascade_stages):
            if k > 0:
                # the output boxes of the previous stage are the proposals of the next one
                proposals = self._create_proposals_from_boxes(prev_pred_boxes, image_sizes)
                proposals = self._match_and_label_boxes(proposals, k, targets)
            predictions = self._run_stage(features, proposals, k)
            prev_pred_boxes = self.box_predictor[k].predict_boxes(predictions, proposals)
            head_outputs.append((self.box_predictor[k], predictions, proposals))
        gt_classes_per_image = _gt_classes(targets)
        losses = {}
        storage = get_event_storage()
        for stage, (predictor, predictions, proposals) in enumerate(head_outputs):
            with storage.name_scope("stage{}".format(stage)):
                stage_losses = predictor.losses(
                    predictions, proposals, gt_classes_per_image=gt_classes_per_image
                )
            losses.update({k + "_stage{}".format(stage): v for k, v in stage_losses.items()})
        return losses
