"""ROI heads whose box predictor is :class:`LongTailFastRCNNOutputLayers`.

Detectron2 has no registry for box predictors, so (as its own projects do) we register
``StandardROIHeads`` / ``CascadeROIHeads`` subclasses that build ours. Each cascade stage gets
its own predictor, hence its own loss module and state (EQL v2 statistics are per stage).
Mask and keypoint heads are Detectron2's, unchanged.
"""
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, CascadeROIHeads, StandardROIHeads

from .box_predictor import LongTailFastRCNNOutputLayers

__all__ = ["LongTailROIHeads", "LongTailCascadeROIHeads"]


def _share_batch_gt(predictors, targets):
    """Give the predictors the GT classes of the batch (BOFL counts GT objects per image)."""
    gts = None if targets is None else [t.gt_classes for t in targets]
    for p in predictors:
        p.batch_gt_classes = gts


@ROI_HEADS_REGISTRY.register()
class LongTailROIHeads(StandardROIHeads):
    """``StandardROIHeads`` with the long-tail box predictor (``MODEL.LT.ROI_LOSS``)."""

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        ret["box_predictor"] = LongTailFastRCNNOutputLayers(cfg, ret["box_head"].output_shape)
        return ret

    def forward(self, images, features, proposals, targets=None):
        _share_batch_gt([self.box_predictor], targets if self.training else None)
        return super().forward(images, features, proposals, targets)


@ROI_HEADS_REGISTRY.register()
class LongTailCascadeROIHeads(CascadeROIHeads):
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

    def forward(self, images, features, proposals, targets=None):
        _share_batch_gt(self.box_predictor, targets if self.training else None)
        return super().forward(images, features, proposals, targets)
