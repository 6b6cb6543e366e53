"""``LongTailRetinaNet``: Detectron2's RetinaNet with the classification loss from ``MODEL.LT.DENSE_LOSS``.

Everything but the classification term is Detectron2's (anchors, matcher, head, smooth-L1/GIoU box
loss, inference); the head's classification bias is the loss's ``prior_logits`` of
``MODEL.RETINANET.PRIOR_PROB`` (0.01; logit(0.01) as Detectron2 for every loss on sigma(z)). The
classification term is the protocol loss ``cls_loss`` (:class:`~lt_detectron.losses.base.DenseLoss`,
``MODEL.LT.DENSE_LOSS``): ``cls_loss(logits (M, C), labels (M,), DenseBatch(image_index,
gt_classes_per_image))``, summed over the valid anchors and divided by the detector's own normaliser
(the EMA of positive anchors). Inference scores are ``cls_loss.predict_probs(logits)``.
"""

from typing import Optional

import torch
from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.meta_arch.retinanet import RetinaNet
from detectron2.utils.events import get_event_storage

from ...compat import dense_box_regression_loss
from ...data.epochs import with_iters_per_epoch
from ...losses import DenseBatch, DenseLoss, FocalDenseLoss, build_dense_loss, train_class_stats
from .finite import check_finite_box_predictions

__all__ = ["LongTailRetinaNet"]


@META_ARCH_REGISTRY.register()
class LongTailRetinaNet(RetinaNet):
    """RetinaNet with a configurable long-tail classification loss (``cls_loss`` submodule)."""

    @configurable
    def __init__(self, *, cls_loss: DenseLoss = None, prior_prob: Optional[float] = None, **kwargs):
        super().__init__(**kwargs)
        if cls_loss is None:
            cls_loss = FocalDenseLoss(
                self.num_classes,
                focal_alpha=self.focal_loss_alpha,
                focal_gamma=self.focal_loss_gamma,
            )
        if cls_loss.num_classes != self.num_classes:
            raise ValueError(
                "cls_loss has %d classes, the detector %d"
                % (cls_loss.num_classes, self.num_classes)
            )
        self.cls_loss = cls_loss
        if prior_prob is not None:  # the loss says what bias gives its probability the prior
            cls_loss.init_prior_bias(self.head.cls_score.bias, prior_prob)

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        r = cfg.MODEL.RETINANET
        ret["cls_loss"] = build_dense_loss(
            with_iters_per_epoch(cfg, None),
            r.NUM_CLASSES,
            train_class_stats(cfg, r.NUM_CLASSES, "MODEL.RETINANET.NUM_CLASSES"),
            focal_alpha=r.FOCAL_LOSS_ALPHA,
            focal_gamma=r.FOCAL_LOSS_GAMMA,
        )
        ret["prior_prob"] = r.PRIOR_PROB
        return ret

    def forward_training(self, images, features, predictions, gt_instances):
        pred_logits, pred_anchor_deltas = self._transpose_dense_predictions(
            predictions, [self.num_classes, 4]
        )
        anchors = self.anchor_generator(features)
        gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances)
        return self.losses(
            anchors,
            pred_logits,
            gt_labels,
            pred_anchor_deltas,
            gt_boxes,
            gt_classes_list=[x.gt_classes for x in gt_instances],
        )

    def losses(
        self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes, gt_classes_list=None
    ):
        """Detectron2's RetinaNet losses with ``loss_cls`` from ``self.cls_loss`` (same normaliser)."""
        num_images = len(gt_labels)
        gt_labels = torch.stack(gt_labels)  # (N, R)
        valid_mask = gt_labels >= 0
        pos_mask = (gt_labels >= 0) & (gt_labels != self.num_classes)
        num_pos_anchors = pos_mask.sum().item()
        get_event_storage().put_scalar("num_pos_anchors", num_pos_anchors / num_images)
        normalizer = self._ema_update("loss_normalizer", max(num_pos_anchors, 1), 100)

        logits = cat(pred_logits, dim=1)  # (N, R, C)
        image_index = torch.arange(num_images, device=logits.device)[:, None].expand_as(gt_labels)[
            valid_mask
        ]
        batch = DenseBatch(image_index=image_index, gt_classes_per_image=gt_classes_list)
        loss_cls = self.cls_loss(logits[valid_mask], gt_labels[valid_mask], batch)

        check_finite_box_predictions(
            cat(pred_anchor_deltas, dim=1)[pos_mask], "RetinaNet (loss_box_reg)"
        )
        loss_box_reg = dense_box_regression_loss(
            anchors,
            self.box2box_transform,
            pred_anchor_deltas,
            gt_boxes,
            pos_mask,
            box_reg_loss_type=self.box_reg_loss_type,
            smooth_l1_beta=self.smooth_l1_beta,
        )
        return {"loss_cls": loss_cls / normalizer, "loss_box_reg": loss_box_reg / normalizer}

    def forward_inference(self, images, features, predictions):
        """Detectron2's, with the scores from ``cls_loss.predict_probs``."""
        pred_logits, pred_anchor_deltas = self._transpose_dense_predictions(
            predictions, [self.num_classes, 4]
        )
        anchors = self.anchor_generator(features)
        results = []
        for img_idx, image_size in enumerate(images.image_sizes):
            scores_per_image = [self.cls_loss.predict_probs(x[img_idx]) for x in pred_logits]
            deltas_per_image = [x[img_idx] for x in pred_anchor_deltas]
            results.append(
                self.inference_single_image(anchors, scores_per_image, deltas_per_image, image_size)
            )
        return results
