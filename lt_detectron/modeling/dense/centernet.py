"""CenterNet ("Objects as Points", Zhou et al. 2019) in Detectron2's style; BOFL's main setting.

* One output level ``MODEL.CENTERNET.IN_FEATURE`` (stride s, 4 in the paper) of a Detectron2 backbone
  (e.g. FPN ``p2``); three branches (3x3 conv ``HEAD_CONV`` + ReLU + 1x1 conv): a C-channel heat map
  (bias from ``PRIOR_PROB`` 0.1, i.e. -2.19 as CenterNet), size (w, h) and sub-pixel offset, both in
  output-pixel units.
* Targets (:func:`centernet_targets`): each GT box is mapped to the output grid (divided by s, clipped
  to [0, W-1] x [0, H-1]); its centre c, integer centre floor(c), radius
  ``max(0, int(gaussian_radius((ceil h, ceil w), MIN_OVERLAP=0.7)))`` (CenterNet's formula) and a
  Gaussian of diameter 2r+1, sigma = (2r+1)/6, drawn with an elementwise max into its class channel
  (value exactly 1 at floor(c)); size target (w, h) and offset c - floor(c) at floor(c).
* Losses: penalty-reduced focal loss (alpha 2, beta 4) / number of peak pixels (max 1): the heat-map
  form of the protocol loss of ``MODEL.LT.DENSE_LOSS``, ``cls_loss.heatmap(...)`` (BOFL: w_{i,k},
  k = one image, eta 0.8); L1 size and offset losses at the centres / (2 x objects), weights 1 / 0.1 / 1.
* Inference (:func:`centernet_decode`): heat-map probabilities (``cls_loss.predict_probs``, sigmoid),
  3x3 max-pool NMS (keep local maxima), top K
  over all classes and pixels, boxes ((x + dx) +- w/2, (y + dy) +- h/2) * s; ``Instances`` with
  ``pred_boxes``, ``scores``, ``pred_classes``; ``detector_postprocess`` to the original size.

Detectron2 v0.6 has no CenterNet. It provides ``DenseDetector`` (preprocessing, forward dispatch,
``detector_postprocess``; used here as the base class), ``Boxes`` and ``Instances``; it lacks the Gaussian
heat-map targets, the penalty-reduced focal loss and the max-pool peak decoding (ours). Its dense decode
(``_decode_per_level_predictions``: threshold, top-k per level, anchor deltas) and ``batched_nms`` do not
apply: CenterNet takes the top K peaks over all classes and pixels and needs no box NMS.
"""

import math
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import get_event_storage

from ...data.epochs import with_iters_per_epoch
from ...losses import DenseBatch, DenseLoss, FocalDenseLoss, build_dense_loss, train_class_stats

__all__ = [
    "CenterNet",
    "CenterNetHead",
    "gaussian_radius",
    "gaussian_2d",
    "draw_gaussian",
    "centernet_targets",
    "centernet_decode",
]


def gaussian_radius(det_size: Tuple[float, float], min_overlap: float = 0.7) -> float:
    """CenterNet's ``gaussian_radius`` (from CornerNet, with CenterNet's exact three cases), unrounded."""
    height, width = det_size
    a1 = 1
    b1 = height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1**2 - 4 * a1 * c1)) / 2
    a2 = 4
    b2 = 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + math.sqrt(b2**2 - 4 * a2 * c2)) / 2
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + math.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def gaussian_2d(radius: int, sigma: float, device=None) -> torch.Tensor:
    """(2r+1, 2r+1) exp(-(x^2 + y^2) / (2 sigma^2)), values < eps * max set to 0 (as CenterNet)."""
    ax = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    g = torch.exp(-(ax[None, :] ** 2 + ax[:, None] ** 2) / (2 * sigma * sigma))
    g[g < torch.finfo(torch.float32).eps * g.max()] = 0
    return g


def draw_gaussian(heatmap: torch.Tensor, center: Tuple[int, int], radius: int) -> torch.Tensor:
    """Max-combine a Gaussian of diameter 2r+1 (sigma = diameter / 6) centred at integer (x, y) into the
    (H, W) ``heatmap`` in place (CenterNet's ``draw_umich_gaussian``)."""
    diameter = 2 * radius + 1
    g = gaussian_2d(radius, diameter / 6, heatmap.device)
    x, y = int(center[0]), int(center[1])
    H, W = heatmap.shape
    left, right = min(x, radius), min(W - x, radius + 1)
    top, bottom = min(y, radius), min(H - y, radius + 1)
    if left + right <= 0 or top + bottom <= 0:
        return heatmap
    region = heatmap[y - top : y + bottom, x - left : x + right]
    g = g[radius - top : radius + bottom, radius - left : radius + right]
    torch.maximum(region, g.to(region.dtype), out=region)
    return heatmap


@torch.no_grad()
def centernet_targets(
    gt_instances: List[Instances], num_classes: int, output_size, stride: int, min_overlap=0.7
):
    """Heat maps and regression targets of a batch.

    Returns ``heat`` (N, C, H, W) and, for the M drawn objects: ``batch_idx`` (M,), ``ys`` (M,), ``xs`` (M,)
    integer centres, ``wh`` (M, 2) box size and ``offset`` (M, 2) = c - floor(c), all in output pixels.
    Boxes that are empty after clipping to the output grid are skipped.
    """
    H, W = int(output_size[0]), int(output_size[1])
    device = gt_instances[0].gt_boxes.device if len(gt_instances) else "cpu"
    heat = torch.zeros(len(gt_instances), num_classes, H, W, device=device)
    b_idx, ys, xs, whs, offs = [], [], [], [], []
    for n, inst in enumerate(gt_instances):
        boxes = (inst.gt_boxes.tensor.detach().float().cpu() / stride).tolist()
        classes = inst.gt_classes.tolist()
        for (x0, y0, x1, y1), c in zip(boxes, classes):
            x0, x1 = min(max(x0, 0.0), W - 1.0), min(max(x1, 0.0), W - 1.0)
            y0, y1 = min(max(y0, 0.0), H - 1.0), min(max(y1, 0.0), H - 1.0)
            h, w = y1 - y0, x1 - x0
            if h <= 0 or w <= 0:
                continue
            radius = max(0, int(gaussian_radius((math.ceil(h), math.ceil(w)), min_overlap)))
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            ix, iy = int(cx), int(cy)
            draw_gaussian(heat[n, int(c)], (ix, iy), radius)
            b_idx.append(n)
            xs.append(ix)
            ys.append(iy)
            whs.append((w, h))
            offs.append((cx - ix, cy - iy))
    as_long = lambda v: torch.tensor(v, dtype=torch.long, device=device)  # noqa: E731
    as_pairs = lambda v: torch.tensor(v, dtype=torch.float32, device=device).reshape(-1, 2)  # noqa: E731
    return heat, as_long(b_idx), as_long(ys), as_long(xs), as_pairs(whs), as_pairs(offs)


@torch.no_grad()
def centernet_decode(
    heat_logits,
    wh,
    offset,
    stride: int,
    k: int = 100,
    kernel: int = 3,
    score_thresh: float = 0.0,
    image_size=None,
    predict_probs=torch.sigmoid,
) -> Instances:
    """Peaks of one image's (C, H, W) heat-map logits -> ``Instances`` (boxes in input pixels).

    Keeps the local maxima of ``predict_probs(heat[None])[0]`` (the loss's; classes on dim 1) under a
    ``kernel`` x ``kernel`` max-pool, the top ``k`` over all classes and pixels with score > ``score_thresh``;
    box = ((x + dx) +- w / 2, (y + dy) +- h / 2) * s.
    """
    C, H, W = heat_logits.shape
    heat = predict_probs(heat_logits.float()[None])[0]  # classes on dim 1, as the losses expect
    hmax = F.max_pool2d(heat[None], kernel, stride=1, padding=(kernel - 1) // 2)[0]
    heat = heat * (hmax == heat).to(heat.dtype)
    k = min(int(k), C * H * W)
    scores, inds = heat.reshape(-1).topk(k)
    keep = scores > score_thresh
    scores, inds = scores[keep], inds[keep]
    classes = inds // (H * W)
    pix = inds % (H * W)
    ys, xs = pix // W, pix % W
    cx = xs.float() + offset[0, ys, xs].float()
    cy = ys.float() + offset[1, ys, xs].float()
    w, h = wh[0, ys, xs].float(), wh[1, ys, xs].float()
    boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=1) * stride
    boxes = Boxes(boxes)
    if image_size is None:
        image_size = (H * stride, W * stride)
    boxes.clip(image_size)
    return Instances(image_size, pred_boxes=boxes, scores=scores, pred_classes=classes)


class CenterNetHead(nn.Module):
    """Heat-map, size and offset branches on one feature map: ``forward([x]) -> [heat, wh, offset]``."""

    @configurable
    def __init__(
        self, *, in_channels: int, num_classes: int, head_conv: int = 64, prior_prob: float = 0.1
    ):
        super().__init__()

        def branch(out):
            return nn.Sequential(
                nn.Conv2d(in_channels, head_conv, 3, padding=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(head_conv, out, 1),
            )

        self.heat = branch(num_classes)
        self.wh = branch(2)
        self.offset = branch(2)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.001)
                nn.init.constant_(m.bias, 0)
        nn.init.constant_(self.heat[-1].bias, -math.log((1 - prior_prob) / prior_prob))
        self.prior_prob = prior_prob

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec):
        c = cfg.MODEL.CENTERNET
        return {
            "in_channels": input_shape.channels,
            "num_classes": c.NUM_CLASSES,
            "head_conv": c.HEAD_CONV,
            "prior_prob": c.PRIOR_PROB,
        }

    def forward(self, features: List[torch.Tensor]):
        x = features[0]
        return [self.heat(x), self.wh(x), self.offset(x)]


@META_ARCH_REGISTRY.register()
class CenterNet(DenseDetector):
    """CenterNet meta-architecture (see the module docstring). ``cls_loss`` holds the heat-map loss."""

    @configurable
    def __init__(
        self,
        *,
        backbone,
        head: CenterNetHead,
        in_feature: str,
        num_classes: int,
        cls_loss: Optional[DenseLoss] = None,
        min_overlap: float = 0.7,
        hm_alpha: float = 2.0,
        hm_beta: float = 4.0,
        hm_weight: float = 1.0,
        wh_weight: float = 0.1,
        off_weight: float = 1.0,
        nms_kernel: int = 3,
        test_topk: int = 100,
        test_score_thresh: float = 0.0,
        max_detections_per_image: int = 100,
        pixel_mean,
        pixel_std,
    ):
        super().__init__(backbone, head, [in_feature], pixel_mean=pixel_mean, pixel_std=pixel_std)
        self.stride = int(backbone.output_shape()[in_feature].stride)
        self.num_classes = num_classes
        self.cls_loss = cls_loss if cls_loss is not None else FocalDenseLoss(num_classes)
        if self.cls_loss.num_classes != num_classes:
            raise ValueError(
                "cls_loss has %d classes, CenterNet %d" % (self.cls_loss.num_classes, num_classes)
            )
        if hasattr(head, "prior_prob"):  # the loss says what bias gives its probability the prior
            self.cls_loss.init_prior_bias(head.heat[-1].bias, head.prior_prob)
        self.min_overlap = min_overlap
        self.hm_alpha, self.hm_beta = hm_alpha, hm_beta
        self.hm_weight, self.wh_weight, self.off_weight = hm_weight, wh_weight, off_weight
        self.nms_kernel = nms_kernel
        self.test_topk = test_topk
        self.test_score_thresh = test_score_thresh
        self.max_detections_per_image = max_detections_per_image

    @classmethod
    def from_config(cls, cfg):
        c = cfg.MODEL.CENTERNET
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        if c.IN_FEATURE not in shapes:
            raise ValueError(
                "MODEL.CENTERNET.IN_FEATURE %r not in the backbone's outputs %s"
                % (c.IN_FEATURE, sorted(shapes))
            )
        return {
            "backbone": backbone,
            "head": CenterNetHead(cfg, shapes[c.IN_FEATURE]),
            "in_feature": c.IN_FEATURE,
            "num_classes": c.NUM_CLASSES,
            "cls_loss": build_dense_loss(
                with_iters_per_epoch(cfg, None),
                c.NUM_CLASSES,
                train_class_stats(cfg, c.NUM_CLASSES, "MODEL.CENTERNET.NUM_CLASSES"),
            ),
            "min_overlap": c.MIN_OVERLAP,
            "hm_alpha": c.HM_ALPHA,
            "hm_beta": c.HM_BETA,
            "hm_weight": c.HM_WEIGHT,
            "wh_weight": c.WH_WEIGHT,
            "off_weight": c.OFF_WEIGHT,
            "nms_kernel": c.NMS_KERNEL,
            "test_topk": c.TOPK_TEST,
            "test_score_thresh": c.SCORE_THRESH_TEST,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
        }

    def forward_training(self, images, features, predictions, gt_instances):
        heat_logits, wh, off = predictions
        heat, b, ys, xs, wh_t, off_t = centernet_targets(
            gt_instances, self.num_classes, heat_logits.shape[2:], self.stride, self.min_overlap
        )
        num_pos = float(heat.eq(1).sum().item())
        try:
            get_event_storage().put_scalar("num_centers", num_pos / max(len(gt_instances), 1))
        except AssertionError:
            pass
        batch = DenseBatch(gt_classes_per_image=[x.gt_classes for x in gt_instances])
        loss_hm = self.cls_loss.heatmap(
            heat_logits, heat, batch, self.hm_alpha, self.hm_beta
        ) / max(num_pos, 1.0)
        M = b.numel()
        if M > 0:
            pred_wh = wh[b, :, ys, xs]  # (M, 2)
            pred_off = off[b, :, ys, xs]
            loss_wh = F.l1_loss(pred_wh, wh_t, reduction="sum") / (2 * M + 1e-4)
            loss_off = F.l1_loss(pred_off, off_t, reduction="sum") / (2 * M + 1e-4)
        else:
            loss_wh = wh.sum() * 0.0
            loss_off = off.sum() * 0.0
        return {
            "loss_hm": self.hm_weight * loss_hm,
            "loss_wh": self.wh_weight * loss_wh,
            "loss_offset": self.off_weight * loss_off,
        }

    def forward_inference(self, images, features, predictions):
        heat_logits, wh, off = predictions
        k = min(self.test_topk, self.max_detections_per_image)
        return [
            centernet_decode(
                heat_logits[i],
                wh[i],
                off[i],
                self.stride,
                k,
                self.nms_kernel,
                self.test_score_thresh,
                image_size,
                predict_probs=self.cls_loss.predict_probs,
            )
            for i, image_size in enumerate(images.image_sizes)
        ]
