"""FCOS (Tian et al., ICCV 2019), anchor-free, in Detectron2's style (v0.6 has none).

* Head: shared cls / box towers (``NUM_CONVS`` 3x3 convs + GN + ReLU), a C-channel classifier with the
  prior-probability bias (0.01), ltrb distances (``relu(Scale_l(x)) * stride`` with ``NORM_REG_TARGETS``,
  else ``exp(Scale_l(x))``) and a centerness logit on the box tower (``CENTERNESS_ON_REG``).
* Targets (:meth:`FCOS.compute_targets`): location (x, y) = (j s + s//2, i s + s//2) on each level; a
  location is a candidate for a GT box if it lies inside the box, or, with center sampling (radius r
  = 1.5), strictly inside the box's centre region [c - r s, c + r s] clipped to the box; and if
  max(l, t, r, b) is in the level's size range [S_{i-1}, S_i] (``SIZES_OF_INTEREST``, S_{-1} = 0,
  S_L = inf). Ambiguous locations take the GT box of smallest area. Centerness target
  sqrt(min(l, r)/max(l, r) * min(t, b)/max(t, b)).
* Losses: classification = ``MODEL.LT.DENSE_LOSS`` (focal | bofl | eqlv2 | ecm) summed over all
  locations / num_pos (all-reduced mean over processes, >= 1); box = GIoU (or -log IoU) weighted by
  the centerness targets / their (all-reduced mean) sum; centerness = BCE / num_pos.
* Inference: per level, probabilities > ``SCORE_THRESH_TEST``, top ``TOPK_CANDIDATES_TEST`` by
  sqrt(cls * ctr), which is the reported score; class-wise ``batched_nms``; ``TEST.DETECTIONS_PER_IMAGE``;
  ``detector_postprocess`` to the original size (in ``DenseDetector.forward``).
"""
import math
from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from fvcore.nn import giou_loss

from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, batched_nms, cat
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import get_event_storage

from ...losses.distributed import all_reduce_sum, get_world_size
from .cls_loss import DenseClassificationLoss, build_dense_cls_loss

__all__ = ["FCOS", "FCOSHead", "Scale", "fcos_centerness"]

INF = 1e8


class Scale(nn.Module):
    """A learnable scalar (one per FPN level)."""

    def __init__(self, init_value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init_value)))

    def forward(self, x):
        return x * self.scale


def _norm(norm: str, channels: int):
    if not norm:
        return None
    if norm == "GN":
        return nn.GroupNorm(math.gcd(32, channels), channels)
    if norm == "BN":
        return nn.BatchNorm2d(channels)
    raise ValueError("MODEL.FCOS.HEAD_NORM must be GN, BN or empty, got %r" % (norm,))


def fcos_centerness(reg_targets: torch.Tensor) -> torch.Tensor:
    """sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)) of (M, 4) ltrb targets."""
    lr = reg_targets[:, [0, 2]]
    tb = reg_targets[:, [1, 3]]
    c = (lr.min(-1).values / lr.max(-1).values.clamp(min=1e-12)) * (
        tb.min(-1).values / tb.max(-1).values.clamp(min=1e-12)
    )
    return torch.sqrt(c.clamp(min=0))


class FCOSHead(nn.Module):
    """FCOS head shared over levels. ``forward(features) -> [logits, box_reg, centerness]``, each a list of
    per-level tensors (N, C, H, W), (N, 4, H, W) (ltrb distances in input pixels, >= 0), (N, 1, H, W)."""

    @configurable
    def __init__(
        self,
        *,
        input_shape: List[ShapeSpec],
        num_classes: int,
        num_convs: int = 4,
        norm: str = "GN",
        prior_prob: float = 0.01,
        norm_reg_targets: bool = True,
        centerness_on_reg: bool = True,
    ):
        super().__init__()
        channels = {s.channels for s in input_shape}
        if len(channels) != 1:
            raise ValueError("FCOS needs the same number of channels on every level, got %s" % channels)
        c = channels.pop()
        self.strides = [int(s.stride) for s in input_shape]
        self.num_classes = num_classes
        self.norm_reg_targets = norm_reg_targets
        self.centerness_on_reg = centerness_on_reg
        for name in ("cls_tower", "bbox_tower"):
            layers = []
            for _ in range(num_convs):
                n = _norm(norm, c)
                layers += [Conv2d(c, c, 3, padding=1, bias=n is None, norm=n), nn.ReLU()]
            self.add_module(name, nn.Sequential(*layers))
        self.cls_logits = nn.Conv2d(c, num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(c, 4, 3, padding=1)
        self.centerness = nn.Conv2d(c, 1, 3, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))
        self.scales = nn.ModuleList([Scale(1.0) for _ in self.strides])

    @classmethod
    def from_config(cls, cfg, input_shape):
        f = cfg.MODEL.FCOS
        return {
            "input_shape": input_shape,
            "num_classes": f.NUM_CLASSES,
            "num_convs": f.NUM_CONVS,
            "norm": f.HEAD_NORM,
            "prior_prob": f.PRIOR_PROB,
            "norm_reg_targets": f.NORM_REG_TARGETS,
            "centerness_on_reg": f.CENTERNESS_ON_REG,
        }

    def forward(self, features: List[torch.Tensor]):
        logits, regs, ctrs = [], [], []
        for x, scale, stride in zip(features, self.scales, self.strides):
            cls_t = self.cls_tower(x)
            box_t = self.bbox_tower(x)
            logits.append(self.cls_logits(cls_t))
            ctrs.append(self.centerness(box_t if self.centerness_on_reg else cls_t))
            reg = scale(self.bbox_pred(box_t))
            regs.append(F.relu(reg) * stride if self.norm_reg_targets else torch.exp(reg.clamp(max=20.0)))
        return [logits, regs, ctrs]


def _ltrb_to_boxes(points: torch.Tensor, ltrb: torch.Tensor) -> torch.Tensor:
    return torch.stack(
        [points[:, 0] - ltrb[:, 0], points[:, 1] - ltrb[:, 1], points[:, 0] + ltrb[:, 2], points[:, 1] + ltrb[:, 3]],
        dim=1,
    )


def _iou_loss(pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-location loss of (M, 4) ltrb predictions vs targets (same location): giou | iou (-log IoU)."""
    if kind == "giou":
        zero = pred.new_zeros(pred.shape[0], 2)
        return giou_loss(_ltrb_to_boxes(zero, pred), _ltrb_to_boxes(zero, target), reduction="none")
    if kind == "iou":
        pred_area = (pred[:, 0] + pred[:, 2]) * (pred[:, 1] + pred[:, 3])
        tgt_area = (target[:, 0] + target[:, 2]) * (target[:, 1] + target[:, 3])
        w = torch.min(pred[:, 0], target[:, 0]) + torch.min(pred[:, 2], target[:, 2])
        h = torch.min(pred[:, 1], target[:, 1]) + torch.min(pred[:, 3], target[:, 3])
        inter = w * h
        iou = (inter + 1.0) / (pred_area + tgt_area - inter + 1.0)
        return -torch.log(iou)
    raise ValueError("MODEL.FCOS.BOX_LOSS must be giou or iou, got %r" % (kind,))


@META_ARCH_REGISTRY.register()
class FCOS(DenseDetector):
    """FCOS meta-architecture (see the module docstring). ``cls_loss`` holds the classification loss."""

    @configurable
    def __init__(
        self,
        *,
        backbone,
        head: FCOSHead,
        head_in_features: List[str],
        num_classes: int,
        cls_loss: Optional[DenseClassificationLoss] = None,
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
        super().__init__(backbone, head, head_in_features, pixel_mean=pixel_mean, pixel_std=pixel_std)
        self.num_classes = num_classes
        self.cls_loss = cls_loss if cls_loss is not None else DenseClassificationLoss("focal", num_classes)
        if self.cls_loss.num_classes != num_classes:
            raise ValueError("cls_loss has %d classes, FCOS %d" % (self.cls_loss.num_classes, num_classes))
        n_levels = len(head_in_features)
        if len(sizes_of_interest) != n_levels - 1:
            raise ValueError(
                "MODEL.FCOS.SIZES_OF_INTEREST needs %d edges for the %d levels %s, got %s"
                % (n_levels - 1, n_levels, list(head_in_features), list(sizes_of_interest))
            )
        edges = [0.0] + [float(s) for s in sizes_of_interest] + [INF]
        self.size_ranges = [(edges[i], edges[i + 1]) for i in range(n_levels)]
        self.strides = list(head.strides)
        self.center_sampling_radius = float(center_sampling_radius)
        self.box_loss = box_loss
        self.test_score_thresh = test_score_thresh
        self.test_topk_candidates = test_topk_candidates
        self.test_nms_thresh = test_nms_thresh
        self.max_detections_per_image = max_detections_per_image

    @classmethod
    def from_config(cls, cfg):
        f = cfg.MODEL.FCOS
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        missing = [n for n in f.IN_FEATURES if n not in shapes]
        if missing:
            raise ValueError("MODEL.FCOS.IN_FEATURES %s not in the backbone's outputs %s" % (missing, sorted(shapes)))
        feature_shapes = [shapes[n] for n in f.IN_FEATURES]
        return {
            "backbone": backbone,
            "head": FCOSHead(cfg, feature_shapes),
            "head_in_features": list(f.IN_FEATURES),
            "num_classes": f.NUM_CLASSES,
            "cls_loss": build_dense_cls_loss(
                cfg, f.NUM_CLASSES, "MODEL.FCOS.NUM_CLASSES", f.FOCAL_LOSS_ALPHA, f.FOCAL_LOSS_GAMMA
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

    # ------------------------------------------------------------------ locations and targets
    @staticmethod
    def compute_locations(h: int, w: int, stride: int, device=None) -> torch.Tensor:
        """(h*w, 2) image coordinates (x, y) = (j s + s//2, i s + s//2), row-major like the predictions."""
        xs = torch.arange(w, dtype=torch.float32, device=device) * stride + stride // 2
        ys = torch.arange(h, dtype=torch.float32, device=device) * stride + stride // 2
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)

    @torch.no_grad()
    def compute_targets(self, locations: List[torch.Tensor], gt_instances: List[Instances]):
        """Labels and ltrb targets of every location.

        Args:
            locations: per level (L_i, 2) points (x, y), levels in ``self.head_in_features`` order.
            gt_instances: per image, with ``gt_boxes`` (XYXY, input pixels) and ``gt_classes``.
        Returns:
            labels (N, L) long in [0, C] (C = background) and reg_targets (N, L, 4) ltrb (undefined where
            the label is background), L = sum L_i.
        """
        C = self.num_classes
        points = cat(locations, dim=0)
        L = points.shape[0]
        lo = cat([points.new_full((len(p),), self.size_ranges[i][0]) for i, p in enumerate(locations)])
        hi = cat([points.new_full((len(p),), self.size_ranges[i][1]) for i, p in enumerate(locations)])
        stride = cat([points.new_full((len(p),), float(self.strides[i])) for i, p in enumerate(locations)])
        xs, ys = points[:, 0:1], points[:, 1:2]
        labels, reg_targets = [], []
        for inst in gt_instances:
            boxes = inst.gt_boxes.tensor.to(points)
            classes = inst.gt_classes.to(points.device)
            if len(boxes) == 0:
                labels.append(torch.full((L,), C, dtype=torch.long, device=points.device))
                reg_targets.append(points.new_zeros(L, 4))
                continue
            x0, y0, x1, y1 = boxes.unbind(1)  # (G,)
            reg = torch.stack([xs - x0, ys - y0, x1 - xs, y1 - ys], dim=2)  # (L, G, 4)
            if self.center_sampling_radius > 0:
                cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
                rad = stride[:, None] * self.center_sampling_radius  # (L, 1)
                cx0 = torch.max(cx - rad, x0)
                cy0 = torch.max(cy - rad, y0)
                cx1 = torch.min(cx + rad, x1)
                cy1 = torch.min(cy + rad, y1)
                inside = (xs > cx0) & (ys > cy0) & (xs < cx1) & (ys < cy1)
            else:
                inside = reg.min(dim=2).values > 0
            max_reg = reg.max(dim=2).values
            in_range = (max_reg >= lo[:, None]) & (max_reg <= hi[:, None])
            area = ((x1 - x0) * (y1 - y0))[None].expand(L, -1).clone()
            area[~(inside & in_range)] = INF
            min_area, idx = area.min(dim=1)
            lab = classes[idx].long()
            lab[min_area >= INF] = C
            labels.append(lab)
            reg_targets.append(reg[torch.arange(L, device=points.device), idx])
        return torch.stack(labels), torch.stack(reg_targets)

    def _locations(self, features):
        return [
            self.compute_locations(f.shape[2], f.shape[3], s, f.device) for f, s in zip(features, self.strides)
        ]

    # ------------------------------------------------------------------ training
    def forward_training(self, images, features, predictions, gt_instances):
        logits, regs, ctrs = self._transpose_dense_predictions(predictions, [self.num_classes, 4, 1])
        locations = self._locations(features)
        labels, reg_targets = self.compute_targets(locations, gt_instances)
        return self.losses(
            cat(logits, dim=1), cat(regs, dim=1), cat(ctrs, dim=1), labels, reg_targets,
            [x.gt_classes for x in gt_instances],
        )

    def losses(self, logits, regs, ctrs, labels, reg_targets, gt_classes_list):
        """logits (N, L, C), regs (N, L, 4), ctrs (N, L, 1), labels (N, L), reg_targets (N, L, 4)."""
        N, L, C = logits.shape
        pos = (labels >= 0) & (labels < C)
        num_pos = pos.sum()
        num_pos_avg = max(all_reduce_sum(num_pos.detach().float().clone()).item() / get_world_size(), 1.0)
        try:
            get_event_storage().put_scalar("num_pos_locations", num_pos.item() / N)
        except AssertionError:
            pass
        image_index = torch.arange(N, device=logits.device)[:, None].expand(N, L).reshape(-1)
        loss_cls = self.cls_loss.focal(logits.reshape(-1, C), labels.reshape(-1), image_index, gt_classes_list)

        reg_pos = regs[pos]
        tgt_pos = reg_targets[pos]
        ctr_pos = ctrs[pos].reshape(-1)
        ctr_targets = fcos_centerness(tgt_pos)
        ctr_sum = max(all_reduce_sum(ctr_targets.sum().detach().clone()).item() / get_world_size(), 1e-6)
        if reg_pos.shape[0] > 0:
            loss_box = (_iou_loss(reg_pos, tgt_pos, self.box_loss) * ctr_targets).sum() / ctr_sum
            loss_ctr = F.binary_cross_entropy_with_logits(ctr_pos, ctr_targets, reduction="sum") / num_pos_avg
        else:  # keep the graph (DDP) with zero losses
            loss_box = regs.sum() * 0.0
            loss_ctr = ctrs.sum() * 0.0
        return {"loss_fcos_cls": loss_cls / num_pos_avg, "loss_fcos_loc": loss_box, "loss_fcos_ctr": loss_ctr}

    # ------------------------------------------------------------------ inference
    def forward_inference(self, images, features, predictions):
        logits, regs, ctrs = self._transpose_dense_predictions(predictions, [self.num_classes, 4, 1])
        locations = self._locations(features)
        results = []
        for i, image_size in enumerate(images.image_sizes):
            results.append(
                self.inference_single_image(
                    locations, [x[i] for x in logits], [x[i] for x in regs], [x[i] for x in ctrs], image_size
                )
            )
        return results

    def inference_single_image(self, locations, logits, regs, ctrs, image_size):
        boxes_all, scores_all, classes_all = [], [], []
        for pts, lg, rg, ct in zip(locations, logits, regs, ctrs):
            prob = self.cls_loss.predict_probs(lg)  # (L_i, C)
            keep = prob > self.test_score_thresh
            scores = torch.sqrt(prob * torch.sigmoid(ct))[keep]
            idx = torch.nonzero(keep)
            k = min(self.test_topk_candidates, scores.numel())
            scores, order = scores.sort(descending=True)
            scores, idx = scores[:k], idx[order[:k]]
            loc, cls = idx.unbind(1)
            boxes_all.append(_ltrb_to_boxes(pts[loc], rg[loc]))
            scores_all.append(scores)
            classes_all.append(cls)
        boxes = Boxes(cat(boxes_all))
        boxes.clip(image_size)
        scores, classes = cat(scores_all), cat(classes_all)
        keep = batched_nms(boxes.tensor, scores, classes, self.test_nms_thresh)[: self.max_detections_per_image]
        return Instances(image_size, pred_boxes=boxes[keep], scores=scores[keep], pred_classes=classes[keep])
