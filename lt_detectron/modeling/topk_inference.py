"""Top-k-per-class inference for Fixed AP (Dave et al. 2021, "Evaluating Large-Vocabulary Object
Detectors: The Devil is in the Details").

Fixed AP evaluates the ``k`` (10,000 on LVIS) highest-scoring detections of every class over the
whole dataset, with no per-image cap. Detectron2's inference keeps at most
``TEST.DETECTIONS_PER_IMAGE`` detections per image, so most classes would get far fewer than ``k``.
Here the per-image cap is removed and, to bound the work, a detection is dropped as soon as it can
no longer be among its class's ``k`` best of the dataset:

- :func:`topk_per_group_mask`: which entries of ``(scores, groups)`` are among the ``k`` highest
  of their group (ties: the earlier entry first, as a stable sort). Groups are classes here; the
  evaluator uses it for the dataset-level top-k per class and for the per-image cap (groups =
  images), so every selection breaks ties the same way.
- :func:`topk_per_class_inference`: Detectron2's ``fast_rcnn_inference`` with no per-image cap and a
  per-class score threshold (scores below it are set to -1 before the usual score filter and NMS,
  the authors' way of raising thresholds).
- :func:`per_class_nms`: Detectron2's ``batched_nms`` (same kept indices in the same order) without
  its ``O(C N)`` cost above 40,000 candidates, where it builds one ``idxs == c`` mask per class: with
  no per-image cap and a 1e-4 floor, an LVIS image can have ~10^5-10^6 candidates over 1,203 classes
  (``benchmarks/benchmark_topk_inference.py``), and those masks took as long as the NMS itself.
- :class:`ClassTopKThresholds`: the running threshold, per class the ``k``-th highest score kept
  so far (``-inf`` while a class has fewer than ``k``). Every detection below it is outranked by
  ``k`` detections already kept, so dropping it never changes the dataset's top-``k`` (per-class
  NMS cannot either: a box only suppresses lower-scoring boxes of its class). The thresholds are
  recomputed when the pending scores reach the number kept (amortised O(n log n)).

Unlike the authors' script there is no separate threshold-estimation pass: thresholds start at
``-inf`` (only ``MODEL.ROI_HEADS.SCORE_THRESH_TEST`` filters the first images) and rise as images
are processed. State is per :class:`ClassTopKThresholds` instance; the box predictor resets its
instance whenever it is put in eval mode (each ``inference_on_dataset``).
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from detectron2.layers import batched_nms
from detectron2.structures import Boxes, Instances
from torchvision.ops import nms

__all__ = [
    "topk_per_group_mask",
    "per_class_nms",
    "topk_per_class_inference",
    "ClassTopKThresholds",
]

# detectron2.layers.batched_nms switches to a per-class loop at this many boxes
_D2_BATCHED_NMS_LOOP = 40000


def topk_per_group_mask(scores: torch.Tensor, groups: torch.Tensor, k: int) -> torch.Tensor:
    """``(N,)`` bool: entry ``i`` is among the ``k`` highest scores of its group ``groups[i]``.

    Args:
        scores: ``(N,)`` float, finite.
        groups: ``(N,)`` integer group (class, or image) of each entry.
        k: entries kept per group (``k <= 0``: none).

    Ties are broken by position (earlier first), exactly like a stable descending sort per group
    (Python's ``sorted(..., reverse=True)[:k]``: the authors' top-k per class, lvis-api's per-image
    cap).
    """
    n = scores.numel()
    keep = torch.zeros(n, dtype=torch.bool, device=scores.device)
    if n == 0 or k <= 0:
        return keep
    order = torch.sort(scores, descending=True, stable=True).indices
    order = order[
        torch.sort(groups[order], stable=True).indices
    ]  # by group, then score desc, then position
    grp_sorted = groups[order]
    pos = torch.arange(n, device=scores.device)
    is_start = torch.ones(n, dtype=torch.bool, device=scores.device)
    is_start[1:] = grp_sorted[1:] != grp_sorted[:-1]
    group_start = torch.cummax(torch.where(is_start, pos, torch.zeros_like(pos)), dim=0).values
    keep[order[(pos - group_start) < k]] = True
    return keep


def per_class_nms(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """NMS per class: the indices :func:`detectron2.layers.batched_nms` returns, in its order.

    Below 40,000 boxes this is Detectron2's call itself. From 40,000 on, Detectron2 loops over the
    classes with a mask ``idxs == c`` over all ``N`` boxes each (``O(C N)``); here the boxes are
    grouped by one stable sort of ``idxs`` instead, so each class's boxes reach ``torchvision``'s
    ``nms`` in the same (ascending index) order, and the kept indices are ordered as Detectron2
    orders them (``argsort`` of the scores, descending, over the ascending kept indices).

    Args:
        boxes: ``(N, 4)`` XYXY. scores: ``(N,)``. idxs: ``(N,)`` class of each box.
        iou_threshold: boxes of one class with IoU above it are suppressed.

    Returns:
        ``(K,)`` int64 indices of the kept boxes, decreasing score.
    """
    if len(boxes) < _D2_BATCHED_NMS_LOOP:
        return batched_nms(boxes, scores, idxs, iou_threshold)
    order = torch.sort(idxs, stable=True).indices
    counts = torch.unique_consecutive(idxs[order], return_counts=True)[1]
    result_mask = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    for seg in torch.split(order, counts.tolist()):
        result_mask[seg[nms(boxes[seg], scores[seg], iou_threshold)]] = True
    keep = result_mask.nonzero().view(-1)
    return keep[scores[keep].argsort(descending=True)]


def _inference_single_image(boxes, scores, image_shape, score_thresh: float, nms_thresh: float):
    """Detectron2's ``fast_rcnn_inference_single_image`` with ``topk_per_image=-1``, step for step,
    with :func:`per_class_nms` for the NMS (same output, see there)."""
    valid_mask = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
    if not valid_mask.all():
        boxes, scores = boxes[valid_mask], scores[valid_mask]
    scores = scores[:, :-1]
    num_bbox_reg_classes = boxes.shape[1] // 4
    boxes = Boxes(boxes.reshape(-1, 4))
    boxes.clip(image_shape)
    boxes = boxes.tensor.view(-1, num_bbox_reg_classes, 4)
    filter_mask = scores > score_thresh
    filter_inds = filter_mask.nonzero()
    if num_bbox_reg_classes == 1:
        boxes = boxes[filter_inds[:, 0], 0]
    else:
        boxes = boxes[filter_mask]
    scores = scores[filter_mask]
    keep = per_class_nms(boxes, scores, filter_inds[:, 1], nms_thresh)
    boxes, scores, filter_inds = boxes[keep], scores[keep], filter_inds[keep]
    result = Instances(image_shape)
    result.pred_boxes = Boxes(boxes)
    result.scores = scores
    result.pred_classes = filter_inds[:, 1]
    return result, filter_inds[:, 0]


def topk_per_class_inference(
    boxes: Sequence[torch.Tensor],
    scores: Sequence[torch.Tensor],
    image_shapes: Sequence[Tuple[int, int]],
    score_thresh: float,
    nms_thresh: float,
    class_thresholds: Optional[torch.Tensor] = None,
    topk_per_class: int = -1,
):
    """Detectron2's ``fast_rcnn_inference`` without a per-image cap, with per-class score thresholds
    (and :func:`per_class_nms`, the same result faster above 40,000 candidates per image).

    Args:
        boxes, scores, image_shapes, score_thresh, nms_thresh: as ``fast_rcnn_inference``: per image
            ``(R, C*4)`` or ``(R, 4)`` boxes and ``(R, C+1)`` probabilities (background last).
        class_thresholds: ``(C,)``; a class-``c`` score below ``class_thresholds[c]`` is dropped
            before NMS (``None``: no per-class threshold).
        topk_per_class: at most this many detections per class and image (``< 0``: no limit).

    Returns:
        ``(instances, kept_indices)`` per image, as ``fast_rcnn_inference``; detections are in
        decreasing score order.
    """
    results, kept = [], []
    for b, s, shape in zip(boxes, scores, image_shapes):
        if class_thresholds is not None:
            below = s[:, :-1] < class_thresholds.to(s.device)[None, :]
            s = torch.cat([s[:, :-1].masked_fill(below, -1.0), s[:, -1:]], dim=1)
        inst, idx = _inference_single_image(b, s, shape, score_thresh, nms_thresh)
        if topk_per_class >= 0 and len(inst):
            sel = topk_per_group_mask(inst.scores, inst.pred_classes, topk_per_class)
            if not bool(sel.all()):
                inst, idx = inst[sel], idx[sel]
        results.append(inst)
        kept.append(idx)
    return results, kept


class ClassTopKThresholds:
    """Per class, the ``k``-th highest detection score kept so far (``-inf`` below ``k`` detections).

    Args:
        num_classes: ``C``.
        k: detections per class the evaluation keeps (``TEST.LT.TOPK_PER_CLASS``).

    Memory: at most ``C * k`` kept scores plus as many pending (float32 + int64 each: 12 bytes), e.g.
    1203 x 10,000 x 2 x 12 bytes = 289 MB at LVIS scale in the worst case; the kept scores live on
    the device of the scores given to :meth:`update`.
    """

    def __init__(self, num_classes: int, k: int):
        if int(k) <= 0:
            raise ValueError(f"k (TEST.LT.TOPK_PER_CLASS) must be > 0, got {k}")
        self.num_classes = int(num_classes)
        self.k = int(k)
        self.reset()

    def reset(self) -> None:
        """Forget every score (start of a new dataset)."""
        self._scores: Optional[torch.Tensor] = None
        self._classes: Optional[torch.Tensor] = None
        self._pending: List[Tuple[torch.Tensor, torch.Tensor]] = []
        self._num_pending = 0
        self.thresholds: Optional[torch.Tensor] = None  # (C,) once a class has k scores

    def update(self, scores: torch.Tensor, classes: torch.Tensor) -> None:
        """Add the ``(N,)`` scores and classes of kept detections."""
        if scores.numel() == 0:
            return
        self._pending.append(
            (scores.detach().float().reshape(-1), classes.detach().long().reshape(-1))
        )
        self._num_pending += scores.numel()
        kept = 0 if self._scores is None else self._scores.numel()
        if self._num_pending >= max(self.k, kept):
            self._compact()

    def _compact(self) -> None:
        parts = (
            [(self._scores, self._classes)] if self._scores is not None else []
        ) + self._pending
        s = torch.cat([p[0] for p in parts])
        c = torch.cat([p[1].to(s.device) for p in parts])
        keep = topk_per_group_mask(s, c, self.k)
        self._scores, self._classes = s[keep], c[keep]
        self._pending, self._num_pending = [], 0
        counts = torch.bincount(self._classes, minlength=self.num_classes)
        if bool((counts >= self.k).any()):
            # k-th highest per class: the minimum of the kept scores of a full class
            kth = torch.full((self.num_classes,), float("inf"), device=s.device)
            kth = kth.scatter_reduce(0, self._classes, self._scores, reduce="amin")
            self.thresholds = torch.where(
                counts >= self.k, kth, torch.full_like(kth, float("-inf"))
            )

    def inference(self, boxes, scores, image_shapes, score_thresh: float, nms_thresh: float):
        """:func:`topk_per_class_inference` with these thresholds, then :meth:`update` with its output."""
        results, kept = topk_per_class_inference(
            boxes, scores, image_shapes, score_thresh, nms_thresh, self.thresholds, self.k
        )
        for inst in results:
            self.update(inst.scores, inst.pred_classes)
        return results, kept
