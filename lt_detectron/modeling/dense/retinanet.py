"""``LongTailRetinaNet``: Detectron2's RetinaNet with the classification loss from ``MODEL.LT.DENSE_LOSS``.

Everything but ``losses()`` is Detectron2's (anchors, matcher, head with prior-0.01 bias
``MODEL.RETINANET.PRIOR_PROB``, smooth-L1/GIoU box loss, inference). The classification term is
:class:`~lt_detectron.modeling.dense.cls_loss.DenseClassificationLoss` (focal | bofl | eqlv2 | ecm), summed
over the valid anchors and divided by the detector's own normaliser (the EMA of positive anchors).
"""
import torch
from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.meta_arch.retinanet import RetinaNet
from detectron2.modeling.box_regression import _dense_box_regression_loss
from detectron2.utils.events import get_event_storage

from .cls_loss import DenseClassificationLoss, build_dense_cls_loss

__all__ = ["LongTailRetinaNet"]


@META_ARCH_REGISTRY.register()
class LongTailRetinaNet(RetinaNet):
    """RetinaNet with a configurable long-tail classification loss (``cls_loss`` submodule)."""

    @configurable
    def __init__(self, *, cls_loss: DenseClassificationLoss = None, **kwargs):
        super().__init__(**kwargs)
        if cls_loss is None:
            cls_loss = DenseClassificationLoss(
                "focal", self.num_classes, focal_alpha=self.focal_loss_alpha, focal_gamma=self.focal_loss_gamma
            )
        if cls_loss.num_classes != self.num_classes:
            raise ValueError("cls_loss has %d classes, the detector %d" % (cls_loss.num_classes, self.num_classes))
        self.cls_loss = cls_loss

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        ret["cls_loss"] = build_dense_cls_loss(
            cfg,
            cfg.MODEL.RETINANET.NUM_CLASSES,
            "MODEL.RETINANET.NUM_CLASSES",
            focal_alpha=cfg.MODEL.RETINANET.FOCAL_LOSS_ALPHA,
            focal_gamma=cfg.MODEL.RETINANET.FOCAL_LOSS_GAMMA,
        )
        return ret

    def forward_training(self, images, features, predictions, gt_instances):
        pred_logits, pred_anchor_deltas = self._transpose_dense_predictions(predictions, [self.num_classes, 4])
        anchors = self.anchor_generator(features)
        gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances)
        return self.losses(
            anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes,
            gt_classes_list=[x.gt_classes for x in gt_instances],
        )

    def losses(self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes, gt_classes_list=None):
        """Detectron2's RetinaNet losses with ``loss_cls`` from ``self.cls_loss`` (same normaliser)."""
        num_images = len(gt_labels)
        gt_labels = torch.stack(gt_labels)  # (N, R)
        valid_mask = gt_labels >= 0
        pos_mask = (gt_labels >= 0) & (gt_labels != self.num_classes)
        num_pos_anchors = pos_mask.sum().item()
        get_event_storage().put_scalar("num_pos_anchors", num_pos_anchors / num_images)
        normalizer = self._ema_update("loss_normalizer", max(num_pos_anchors, 1), 100)

        logits = cat(pred_logits, dim=1)  # (N, R, C)
        image_index = torch.arange(num_images, device=logits.device)[:, None].expand_as(gt_labels)[valid_mask]
        if gt_classes_list is None:  # called with Detectron2's signature: BOFL cannot count GT objects
            if self.cls_loss.name == "bofl":
                raise ValueError("LongTailRetinaNet.losses needs gt_classes_list for BOFL")
        loss_cls = self.cls_loss.focal(logits[valid_mask], gt_labels[valid_mask], image_index, gt_classes_list)

        loss_box_reg = _dense_box_regression_loss(
            anchors,
            self.box2box_transform,
            pred_anchor_deltas,
            gt_boxes,
            pos_mask,
            box_reg_loss_type=self.box_reg_loss_type,
            smooth_l1_beta=self.smooth_l1_beta,
        )
        return {"loss_cls": loss_cls / normalizer, "loss_box_reg": loss_box_reg / normalizer}
