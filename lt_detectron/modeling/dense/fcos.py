"""FCOS (Tian et al., ICCV 2019) with the yacs config ``MODEL.FCOS.*``, on Detectron2 v0.6's FCOS.

Detectron2 v0.6 ships FCOS (``modeling/meta_arch/fcos.py``: ``FCOS``, ``FCOSHead``; LazyConfig only).
:class:`FCOS` subclasses it and uses its pieces where they give the same numbers (up to float rounding;
``tests/modeling/test_fcos_detectron2_parity.py`` checks each piece against detectron2's):

* used as they are: ``DenseDetector`` (preprocessing, forward, ``detector_postprocess``,
  ``_transpose_dense_predictions``), ``label_anchors`` (labels in [0, C], C = background, and matched
  boxes, from :meth:`FCOS.match_anchors`; called per image, as it fails on an image without boxes),
  ``compute_ctrness_targets`` (sqrt(min(l, r)/max(l, r) * min(t, b)/max(t, b)) of the matched
  boxes), ``Box2BoxTransformLinear`` (ltrb <-> boxes; here in input pixels, ``normalize_by_size=False``),
  ``_decode_per_level_predictions`` (threshold, top ``TOPK_CANDIDATES_TEST`` per level, decode),
  ``pairwise_point_box_distance``, and the points: ``anchor_generator`` gives one stride-sized box per
  location, centred on the point (j s + s/2, i s + s/2).
* ours, because detectron2's differs from the FCOS reference implementation:

  - head (:class:`FCOSHead`): ltrb = ``relu(Scale_l(x)) * stride`` (``NORM_REG_TARGETS``) else
    ``exp(Scale_l(x))``, with a learnable Scale per level; centerness on the box or the cls tower
    (``CENTERNESS_ON_REG``); GN with gcd(32, C) groups after bias-free convs, one BN shared by the levels.
    Detectron2's FCOSHead is RetinaNetHead's (no Scale, deltas in strides, centerness on the box tower,
    GroupNorm(32, C), per-level BN) and has other parameter names.
  - assignment (:meth:`FCOS.match_anchors`): a location is a candidate for a GT box if it is strictly
    inside it and, with center sampling (``CENTER_SAMPLING_RADIUS`` r > 0), strictly inside its centre
    region [c - r s, c + r s]; and if max(l, t, r, b) is in the closed range [S_{i-1}, S_i] of its level
    (``SIZES_OF_INTEREST``, S_{-1} = 0, S_L = inf). Ambiguous locations take the GT box of smallest
    area. Detectron2's has fixed open ranges (4 s, 8 s), no positives at r = 0 and fails on an image
    without boxes.
  - losses (:meth:`FCOS.losses`): classification = the protocol loss of ``MODEL.LT.DENSE_LOSS``
    (``cls_loss``) summed over all locations / num_pos (all-reduced mean over processes, >= 1); box =
    GIoU (or -log IoU, ``BOX_LOSS``) weighted by the centerness targets / their (all-reduced mean)
    sum; centerness = BCE / num_pos. Detectron2's: sigmoid focal loss, unweighted GIoU, all three over
    an EMA of num_pos.
  - inference (:meth:`FCOS.inference_single_image`): per level, probabilities
    (``cls_loss.predict_probs``) > ``SCORE_THRESH_TEST``, top ``TOPK_CANDIDATES_TEST`` by sqrt(cls * ctr),
    which is the reported score; boxes clipped to the image, class-wise ``batched_nms``,
    ``TEST.DETECTIONS_PER_IMAGE``. Detectron2's thresholds sqrt(sigmoid(cls) * ctr) itself and clips
    only after NMS (in ``detector_postprocess``).
"""

from typing import List, Optional

import torch
import torch.nn.functional as F
from fvcore.nn import giou_loss

from detectron2.config import configurable
from detectron2.layers import batched_nms, cat
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.modeling.box_regression import Box2BoxTransformLinear
from detectron2.modeling.meta_arch.fcos import FCOS as Detectron2FCOS
from detectron2.structures import Boxes, Instances, pairwise_point_box_distance
from detectron2.utils.events import get_event_storage

from ...data.epochs import with_iters_per_epoch
from ...losses import DenseBatch, DenseLoss, FocalDenseLoss, build_dense_loss, train_class_stats
from ...losses.distributed import all_reduce_sum, get_world_size
from .finite import check_finite_box_predictions
from .fcos_head import FCOSHead, Scale

__all__ = ["FCOS", "FCOSHead", "Scale"]

INF = 1e8


@META_ARCH_REGISTRY.register()
class FCOS(Detectron2FCOS):
    """FCOS meta-architecture (see the module docstring). ``cls_loss`` holds the classification loss."""

    @configurable
    def __init__(
        self,
        *,
        backbone,
        head: FCOSHead,
        head_in_features: List[str],
        num_classes: int,
        cls_loss: Optional[DenseLoss] = None,
        sizes_of_interest=(64, 128, 256, 512),
        center_sampling_radius: float = 1.5,
        box_loss: str = "giou",
        test_score_thresh: float = 0.05,
        test_topk_candidates: int = 1000,
        test_nms_thresh: float = 0.6,
        max_detections_per_image: int = 100,
        pixel_mean,
        pixel_std,
    ):
        super().__init__(
            backbone=backbone,
            head=head,
            head_in_features=head_in_features,
            box2box_transform=Box2BoxTransformLinear(
                normalize_by_size=False
            ),  # the head predicts pixels
            num_classes=num_classes,
            center_sampling_radius=center_sampling_radius,
            test_score_thresh=test_score_thresh,
            test_topk_candidates=test_topk_candidates,
            test_nms_thresh=test_nms_thresh,
            max_detections_per_image=max_detections_per_image,
            pixel_mean=pixel_mean,
            pixel_std=pixel_std,
        )
        self.strides = list(head.strides)
        self.cls_loss = cls_loss if cls_loss is not None else FocalDenseLoss(num_classes)
        if self.cls_loss.num_classes != num_classes:
            raise ValueError(
                "cls_loss has %d classes, FCOS %d" % (self.cls_loss.num_classes, num_classes)
            )
        if hasattr(head, "prior_prob"):  # the loss says what bias gives its probability the prior
            self.cls_loss.init_prior_bias(head.cls_logits.bias, head.prior_prob)
        n_levels = len(head_in_features)
        if len(sizes_of_interest) != n_levels - 1:
            raise ValueError(
                "MODEL.FCOS.SIZES_OF_INTEREST needs %d edges for the %d levels %s, got %s"
                % (n_levels - 1, n_levels, list(head_in_features), list(sizes_of_interest))
            )
        if box_loss not in ("giou", "iou"):
            raise ValueError("MODEL.FCOS.BOX_LOSS must be giou or iou, got %r" % (box_loss,))
        edges = [0.0] + [float(s) for s in sizes_of_interest] + [INF]
        self.size_ranges = [(edges[i], edges[i + 1]) for i in range(n_levels)]
        self.box_loss = box_loss

    @classmethod
    def from_config(cls, cfg):
        f = cfg.MODEL.FCOS
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        missing = [n for n in f.IN_FEATURES if n not in shapes]
        if missing:
            raise ValueError(
                "MODEL.FCOS.IN_FEATURES %s not in the backbone's outputs %s"
                % (missing, sorted(shapes))
            )
        feature_shapes = [shapes[n] for n in f.IN_FEATURES]
        return {
            "backbone": backbone,
            "head": FCOSHead(cfg, feature_shapes),
            "head_in_features": list(f.IN_FEATURES),
            "num_classes": f.NUM_CLASSES,
            "cls_loss": build_dense_loss(
                with_iters_per_epoch(cfg, None),
                f.NUM_CLASSES,
                train_class_stats(cfg, f.NUM_CLASSES, "MODEL.FCOS.NUM_CLASSES"),
                focal_alpha=f.FOCAL_LOSS_ALPHA,
                focal_gamma=f.FOCAL_LOSS_GAMMA,
            ),
            "sizes_of_interest": list(f.SIZES_OF_INTEREST),
            "center_sampling_radius": f.CENTER_SAMPLING_RADIUS,
            "box_loss": f.BOX_LOSS,
            "test_score_thresh": f.SCORE_THRESH_TEST,
            "test_topk_candidates": f.TOPK_CANDIDATES_TEST,
            "test_nms_thresh": f.NMS_THRESH_TEST,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
        }

    # ------------------------------------------------------------------ targets
    @torch.no_grad()
    def match_anchors(
        self, anchors: List[Boxes], gt_instances: List[Instances]
    ) -> List[torch.Tensor]:
        """Detectron2's interface with FCOS' rule (module docstring).

        Args:
            anchors: per level (R_i,) ``Boxes`` of the locations (centre = the point, width = the stride),
                levels in ``self.head_in_features`` order.
            gt_instances: per image, with ``gt_boxes`` (XYXY, input pixels).
        Returns:
            per image, (R,) long: the index of the matched GT box, -1 for background; R = sum R_i.
        """
        points = Boxes.cat(anchors).get_centers()  # (R, 2)
        R = len(points)
        lo = cat(
            [points.new_full((len(a),), self.size_ranges[i][0]) for i, a in enumerate(anchors)]
        )
        hi = cat(
            [points.new_full((len(a),), self.size_ranges[i][1]) for i, a in enumerate(anchors)]
        )
        xs, ys = points[:, 0:1], points[:, 1:2]
        radius = (
            cat([a.tensor[:, 2] - a.tensor[:, 0] for a in anchors])[:, None]
            * self.center_sampling_radius
        )
        matched = []
        for inst in gt_instances:
            gt = Boxes(inst.gt_boxes.tensor.to(points))
            if len(gt) == 0:
                matched.append(torch.full((R,), -1, dtype=torch.long, device=points.device))
                continue
            reg = pairwise_point_box_distance(points, gt)  # (R, G, 4) ltrb
            candidate = reg.min(dim=2).values > 0
            if self.center_sampling_radius > 0:
                cx, cy = gt.get_centers().unbind(dim=1)  # (G,)
                candidate &= (
                    (xs > cx - radius)
                    & (xs < cx + radius)
                    & (ys > cy - radius)
                    & (ys < cy + radius)
                )
            max_reg = reg.max(dim=2).values
            candidate &= (max_reg >= lo[:, None]) & (max_reg <= hi[:, None])
            area = gt.area()[None].expand(R, -1).clone()
            area[~candidate] = INF
            min_area, idx = area.min(dim=1)
            idx[min_area >= INF] = -1
            matched.append(idx)
        return matched

    @torch.no_grad()
    def label_anchors(self, anchors: List[Boxes], gt_instances: List[Instances]):
        """Detectron2's (per image (R,) labels in [0, C], C = background, and (R,) matched ``Boxes``), also
        for an image without boxes (all background, zero boxes), where detectron2's fails."""
        R = sum(len(a) for a in anchors)
        labels, boxes = [], []
        for inst in gt_instances:
            if len(inst.gt_boxes) == 0:
                labels.append(
                    torch.full((R,), self.num_classes, dtype=torch.long, device=anchors[0].device)
                )
                boxes.append(Boxes(anchors[0].tensor.new_zeros(R, 4)))
                continue
            (label,), (box,) = super().label_anchors(anchors, [inst])
            labels.append(label)
            boxes.append(box)
        return labels, boxes

    # ------------------------------------------------------------------ training
    def forward_training(self, images, features, predictions, gt_instances):
        pred_logits, pred_deltas, pred_ctrs = self._transpose_dense_predictions(
            predictions, [self.num_classes, 4, 1]
        )
        anchors = self.anchor_generator(features)
        gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances)
        return self.losses(
            anchors,
            pred_logits,
            gt_labels,
            pred_deltas,
            gt_boxes,
            pred_ctrs,
            gt_classes_list=[x.gt_classes for x in gt_instances],
        )

    def box_loss_per_location(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(M,) loss of (M, 4) ltrb predictions vs targets of the same locations: GIoU of the two boxes
        placed at a common origin (translation-invariant, so equal to the GIoU of the decoded boxes), or
        -log((I + 1) / (U + 1)) (``iou``, UnitBox as the FCOS reference)."""
        if self.box_loss == "giou":
            origin = pred.new_zeros(pred.shape[0], 4)
            to_box = self.box2box_transform.apply_deltas
            return giou_loss(to_box(pred, origin), to_box(target, origin), reduction="none")
        pred_area = (pred[:, 0] + pred[:, 2]) * (pred[:, 1] + pred[:, 3])
        tgt_area = (target[:, 0] + target[:, 2]) * (target[:, 1] + target[:, 3])
        w = torch.min(pred[:, 0], target[:, 0]) + torch.min(pred[:, 2], target[:, 2])
        h = torch.min(pred[:, 1], target[:, 1]) + torch.min(pred[:, 3], target[:, 3])
        inter = w * h
        return -torch.log((inter + 1.0) / (pred_area + tgt_area - inter + 1.0))

    def losses(
        self,
        anchors,
        pred_logits,
        gt_labels,
        pred_anchor_deltas,
        gt_boxes,
        pred_centerness,
        gt_classes_list=None,
    ):
        """Detectron2's signature: per level (N, R_i, C) logits, (N, R_i, 4) ltrb, (N, R_i, 1) centerness
        logits; per image (R,) labels and (R,) matched ``Boxes``; plus the images' GT classes (``DenseBatch``)."""
        labels = torch.stack(gt_labels)  # (N, R)
        logits = cat(pred_logits, dim=1)
        N, R, C = logits.shape
        pos = (labels >= 0) & (labels < C)
        num_pos = pos.sum()
        num_pos_avg = max(
            all_reduce_sum(num_pos.detach().float().clone()).item() / get_world_size(), 1.0
        )
        try:
            get_event_storage().put_scalar("num_pos_locations", num_pos.item() / N)
        except AssertionError:
            pass
        image_index = torch.arange(N, device=logits.device)[:, None].expand(N, R).reshape(-1)
        batch = DenseBatch(image_index=image_index, gt_classes_per_image=gt_classes_list)
        loss_cls = self.cls_loss(logits.reshape(-1, C), labels.reshape(-1), batch)

        regs = cat(pred_anchor_deltas, dim=1)
        ctrs = cat(pred_centerness, dim=1)
        anchors_t = Boxes.cat(anchors).tensor
        reg_targets = torch.stack(
            [self.box2box_transform.get_deltas(anchors_t, b.tensor) for b in gt_boxes]
        )[pos]
        ctr_targets = self.compute_ctrness_targets(anchors, gt_boxes)[pos]  # (M,)
        ctr_sum = max(
            all_reduce_sum(ctr_targets.sum().detach().clone()).item() / get_world_size(), 1e-6
        )
        if reg_targets.shape[0] > 0:
            check_finite_box_predictions(regs[pos], "FCOS (loss_fcos_loc)")
            loss_box = (
                self.box_loss_per_location(regs[pos], reg_targets) * ctr_targets
            ).sum() / ctr_sum
            loss_ctr = F.binary_cross_entropy_with_logits(
                ctrs[pos].reshape(-1), ctr_targets, reduction="sum"
            )
            loss_ctr = loss_ctr / num_pos_avg
        else:  # keep the graph (DDP) with zero losses
            loss_box = regs.sum() * 0.0
            loss_ctr = ctrs.sum() * 0.0
        return {
            "loss_fcos_cls": loss_cls / num_pos_avg,
            "loss_fcos_loc": loss_box,
            "loss_fcos_ctr": loss_ctr,
        }

    # ------------------------------------------------------------------ inference
    def forward_inference(self, images, features, predictions):
        pred_logits, pred_deltas, pred_ctrs = self._transpose_dense_predictions(
            predictions, [self.num_classes, 4, 1]
        )
        anchors = self.anchor_generator(features)
        return [
            self.inference_single_image(
                anchors,
                [x[i] for x in pred_logits],
                [x[i] for x in pred_deltas],
                [x[i] for x in pred_ctrs],
                image_size,
            )
            for i, image_size in enumerate(images.image_sizes)
        ]

    def inference_single_image(self, anchors, logits, deltas, ctrs, image_size):
        """One image's per-level (R_i, C) logits, (R_i, 4) ltrb, (R_i, 1) centerness logits -> ``Instances``
        (``pred_boxes``, ``scores``, ``pred_classes``) in input pixels."""
        per_level = []
        for anchors_i, logits_i, deltas_i, ctrs_i in zip(anchors, logits, deltas, ctrs):
            prob = self.cls_loss.predict_probs(logits_i)
            # the threshold is on the probability, the ranking on sqrt(prob * ctr); detectron2's decode
            # thresholds what it ranks, so the scores below the threshold are set to -1 and it keeps > -1
            scores = torch.where(
                prob > self.test_score_thresh, torch.sqrt(prob * torch.sigmoid(ctrs_i)), -1.0
            )
            per_level.append(
                self._decode_per_level_predictions(
                    anchors_i, scores, deltas_i, -1.0, self.test_topk_candidates, image_size
                )
            )
        pred = Instances.cat(per_level)
        pred.pred_boxes.clip(image_size)
        keep = batched_nms(
            pred.pred_boxes.tensor, pred.scores, pred.pred_classes, self.test_nms_thresh
        )
        return pred[keep[: self.max_detections_per_image]]
