"""Functions shared by the LVIS and COCO-LT protocols and evaluators.

- :func:`instances_to_arrays`: Detectron2 ``Instances`` -> one ``(N, 7)`` float64 array
  ``[image_id, x, y, w, h, score, category_id]`` (the "detection matrix" the fast
  backends read without building a dict per detection) plus RLE masks;
  :func:`detections_to_dicts`: that matrix as the result dicts of lvis-api / pycocotools.
- :func:`encode_masks`: masks -> COCO RLE, equal to pycocotools' and faster;
- :func:`resolve_backend`: hotcoco when installed, else the reference implementation.
- :func:`keep_top_per_group`: the per-image cap / the top-k per class of a detection matrix.
- per-category AP and group AP from a COCO/LVIS ``precision`` array, the csv writer and
  the log table.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

try:
    from . import _coco_rle
except ImportError:  # not built (no C compiler at install): pycocotools reads the RLEs
    _coco_rle = None

logger = logging.getLogger(__name__)

__all__ = [
    "instances_to_arrays",
    "detections_to_dicts",
    "mask_boxes_and_areas",
    "roi_level_masks",
    "encode_masks",
    "resolve_backend",
    "keep_top_per_group",
    "gc_paused",
    "load_gt_json",
    "category_sums",
    "precision_ap",
    "per_category_ap",
    "write_per_category_csv",
    "format_table",
]


@contextlib.contextmanager
def gc_paused():
    """Pause the cyclic garbage collector while building millions of small, acyclic objects (result
    dicts, per-row lists): each full collection rescans them all, which otherwise dominates the time.
    The previous state is restored on exit."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def load_gt_json(json_file: Optional[str], dataset_name: str = "") -> dict:
    """Read a COCO/LVIS ground-truth json with clear errors for the usual mistakes."""
    where = f" of dataset '{dataset_name}'" if dataset_name else ""
    if not json_file:
        raise ValueError(
            f"No ground-truth json_file in the metadata{where}; the evaluator needs one."
        )
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"Ground-truth json{where} not found: {json_file}")
    try:
        with open(json_file, "r") as f:
            gt = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"Ground-truth json{where} is not valid JSON: {json_file}: {e}") from e
    except RecursionError:
        raise ValueError(
            f"Ground-truth json{where} nests too deeply to be parsed: {json_file}. A COCO/LVIS "
            "ground truth is an object with flat images/annotations/categories lists."
        ) from None
    if not isinstance(gt, dict):
        raise ValueError(
            f"Ground-truth json{where} must be an object with images/annotations/categories: {json_file}"
        )
    missing = [
        k for k in ("images", "annotations", "categories") if not isinstance(gt.get(k), list)
    ]
    if missing:
        raise ValueError(f"Ground-truth json{where} lacks the list(s) {missing}: {json_file}")
    return gt


def instances_to_arrays(
    instances,
    image_id: int,
    contiguous_to_dataset: np.ndarray,
    max_dets: Optional[int] = None,
    with_masks: bool = False,
    encoder=None,
) -> Tuple[np.ndarray, Optional[List[dict]]]:
    """Convert Detectron2 ``Instances`` of one image to a detection matrix (+ RLE masks).

    ``pred_masks`` are full-image ``(N, H, W)`` masks, or ROI-level (``ROIMasks`` / ``(N, 1, M, M)``
    probabilities with ``pred_boxes`` in the coordinates of ``instances.image_size``, as
    :mod:`lt_detectron.modeling.roi_mask_inference` leaves them): those give the RLEs of Detectron2's
    pasted masks without building them (:func:`~.roi_masks.encode_roi_masks`).

    Boxes XYXY -> XYWH in float32 (as Detectron2's ``instances_to_coco_json``), scores,
    contiguous class -> dataset category id. With ``max_dets`` keeps the ``max_dets``
    highest scores (ties: earlier detection first, like lvis-api's stable sort) in their
    original order, so every backend sees the same detections.

    ``encoder``: a :class:`~.roi_mask_pipeline.RoiMaskPipeline`; ROI-level masks then go to it, and
    the RLEs returned are its :class:`~.roi_mask_pipeline.PendingRLEs` (``result()`` gives them).
    """
    n = len(instances)
    if n == 0:
        return np.zeros((0, 7), np.float64), ([] if with_masks else None)
    scores = instances.scores.detach().cpu().numpy().astype(np.float32, copy=False)
    keep = None
    if max_dets is not None and n > max_dets:
        order = np.argsort(-scores, kind="stable")
        keep = np.sort(order[:max_dets])
        scores = scores[keep]
    boxes = instances.pred_boxes.tensor.detach().cpu().numpy().astype(np.float32, copy=False)
    classes = instances.pred_classes.detach().cpu().numpy().astype(np.int64, copy=False)
    if keep is not None:
        boxes, classes = boxes[keep], classes[keep]
    xywh = boxes.copy()
    xywh[:, 2:] -= xywh[:, :2]
    if classes.size and (classes.min() < 0 or classes.max() >= len(contiguous_to_dataset)):
        raise ValueError(
            f"pred_classes out of range [0, {len(contiguous_to_dataset)}): got {classes.min()}..{classes.max()}"
        )
    out = np.empty((len(scores), 7), np.float64)
    out[:, 0] = image_id
    out[:, 1:5] = xywh
    out[:, 5] = scores
    out[:, 6] = contiguous_to_dataset[classes]
    rles = None
    if with_masks:
        if not instances.has("pred_masks"):
            raise ValueError("segm evaluation needs `pred_masks` in the predicted Instances")

        import torch

        masks = instances.pred_masks
        roi = roi_level_masks(masks)
        if keep is not None:
            idx = torch.as_tensor(keep, device=(roi if roi is not None else masks).device)
            masks = roi[idx] if roi is not None else masks[idx]
        elif roi is not None:
            masks = roi
        if roi is not None:  # N x M x M probabilities: encoded as Detectron2 would paste them
            if encoder is not None:
                return out, encoder.submit(masks, boxes, tuple(instances.image_size))
            from .roi_masks import encode_roi_masks

            return out, encode_roi_masks(masks, boxes, tuple(instances.image_size))
        m = masks.detach().cpu().numpy()
        m = m.view(np.uint8) if m.dtype == np.bool_ else m.astype(np.uint8)  # bool: no copy
        rles = encode_masks(m)
        for r in rles:
            r["counts"] = r["counts"].decode("utf-8")
    return out, rles


def roi_level_masks(masks):
    """The ``(N, M, M)`` tensor of ROI-level ``pred_masks`` (Detectron2 ``ROIMasks`` or an
    ``(N, 1, M, M)`` tensor, as the mask head predicts them), ``None`` for full-image masks."""
    from detectron2.structures import ROIMasks

    if isinstance(masks, ROIMasks):
        return masks.tensor
    if masks.dim() == 4 and masks.shape[1] == 1:
        return masks[:, 0]
    return None


def encode_masks(masks: np.ndarray) -> List[dict]:
    """``(N, H, W)`` uint8 masks -> COCO RLEs (``{"size": [H, W], "counts": bytes}``), the very same as
    ``pycocotools.mask.encode`` of the full masks, and faster when masks cover few columns of the
    image, as detection masks do.

    RLE runs go down the columns, so the columns left and right of a mask's pixels are whole runs of
    zeros: only the strip of columns between its first and last set pixel is run-length coded (in
    NumPy), the zeros before and after it are added to the first and last run, and pycocotools
    compresses the runs. The cost is one pass over the masks (which columns are set) plus the strips,
    instead of the full image per mask.
    """
    import pycocotools.mask as mask_util

    n, h, w = masks.shape
    if n == 0:
        return []
    cols = masks.any(axis=1)  # (N, W)
    first = cols.argmax(axis=1)
    stop = w - cols[:, ::-1].argmax(axis=1)
    nonempty = cols[np.arange(n), first]
    runs_of = []
    for i in range(n):
        if not nonempty[i]:
            runs_of.append({"size": [h, w], "counts": [h * w]})
            continue
        x0, x1 = int(first[i]), int(stop[i])
        f = masks[i, :, x0:x1].T.ravel()  # the strip, column-major
        change = np.flatnonzero(f[1:] != f[:-1]) + 1
        runs = np.diff(change, prepend=0, append=f.size)
        if f[0]:
            runs = np.concatenate(([0], runs))  # runs start with zeros
        runs[0] += x0 * h
        tail = (w - x1) * h
        if tail:
            if len(runs) % 2:  # the last run is zeros
                runs[-1] += tail
            else:
                runs = np.append(runs, tail)
        runs_of.append({"size": [h, w], "counts": runs.tolist()})
    return mask_util.frPyObjects(runs_of, h, w)


def detections_to_dicts(dets: np.ndarray, rles: Optional[List[dict]]) -> List[dict]:
    """Result dicts (``image_id``, ``category_id``, ``bbox`` XYWH, ``score`` [, ``segmentation``]) of a
    detection matrix, for the reference implementations (lvis-api, pycocotools)."""
    out = []
    ids = dets[:, 0].astype(np.int64).tolist()
    cats = dets[:, 6].astype(np.int64).tolist()
    boxes = dets[:, 1:5].tolist()
    scores = dets[:, 5].tolist()
    for i in range(len(dets)):
        r = {"image_id": ids[i], "category_id": cats[i], "bbox": boxes[i], "score": scores[i]}
        if rles is not None:
            r["segmentation"] = rles[i]
        out.append(r)
    return out


def mask_boxes_and_areas(rles: List[dict]) -> Tuple[np.ndarray, np.ndarray]:
    """``(N, 4)`` XYWH boxes and ``(N,)`` areas of RLE masks: what lvis-api / pycocotools give a mask
    result without a box, and what Detectron2's evaluators evaluate (they drop the box of mask results),
    so small/medium/large use the mask's area.

    The values of pycocotools' ``toBbox`` and ``area``; read from the compressed ``counts`` strings by
    a compiled kernel (``_coco_rle.pyx``) where it is built, else by pycocotools itself (also where
    the kernel declines a list: an image of height 0, counts that are not a compressed string)."""
    enc = rles if isinstance(rles, list) else list(rles)  # pycocotools reads text and bytes counts
    if not enc:
        return np.zeros((0, 4)), np.zeros(0)
    if _coco_rle is not None:
        try:
            return _coco_rle.rle_geometry(enc)
        except ValueError:  # pycocotools reads it or raises its own error
            pass
    from pycocotools import mask as mask_util

    # pycocotools' area() of a list sizes a uint8 array by the list length: at most 255 masks per call
    areas = np.concatenate(
        [np.asarray(mask_util.area(enc[i : i + 255]), np.float64) for i in range(0, len(enc), 255)]
    )
    return np.asarray(mask_util.toBbox(enc), np.float64).reshape(-1, 4), areas


def resolve_backend(backend: str, reference: str) -> str:
    """``"hotcoco"`` for ``"auto"``/``"hotcoco"`` when hotcoco is installed, else ``reference``
    (the protocol's reference implementation: ``"lvis"`` or ``"pycocotools"``)."""
    if backend not in ("auto", "hotcoco", reference):
        raise ValueError(f"backend must be 'auto', 'hotcoco' or {reference!r}, got {backend!r}")
    if backend in ("auto", "hotcoco"):
        try:
            import hotcoco  # noqa: F401

            return "hotcoco"
        except ImportError:
            if backend == "hotcoco":
                raise
            logger.warning(
                "hotcoco is not installed; evaluation falls back to the slower %s.", reference
            )
    return reference


def keep_top_per_group(dets: np.ndarray, rles: Optional[List[dict]], column: int, k: int):
    """The ``k`` highest-scoring detections of every group of a detection matrix, in their order.

    ``column``: 0 groups by image (the per-image cap of the LVIS protocol: lvis-api's
    ``LVISResults(max_dets=k)``), 6 by category (Fixed AP's top-k per class over the dataset).
    Ties are broken by position, like a stable sort (:func:`~lt_detectron.modeling.topk_inference.
    topk_per_group_mask`). ``k < 0`` keeps everything.
    """
    import torch

    from ..modeling.topk_inference import topk_per_group_mask

    if k < 0 or len(dets) == 0:
        return dets, rles
    groups = dets[:, column].astype(np.int64)
    counts = np.bincount(groups - groups.min())
    if counts.max() <= k:
        return dets, rles
    keep = topk_per_group_mask(torch.from_numpy(dets[:, 5]), torch.from_numpy(groups), k).numpy()
    idx = np.nonzero(keep)[0]
    return dets[idx], ([rles[i] for i in idx] if rles is not None else None)


def category_sums(precision: np.ndarray, area_idx: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Per category: sum and number of valid (> -1) precision entries over IoU x recall.

    ``precision`` is (T, R, K, A) (lvis-api) or (T, R, K, A, M) (COCO; last max-dets used), or
    already a ``(sums, counts)`` pair (returned as is). Group AP = sums[idx].sum() /
    counts[idx].sum(), exactly lvis-api's/pycocotools' ``summarize`` (mean of the valid entries)
    restricted to those categories.
    """
    if isinstance(precision, tuple):  # already (sums, counts) (hotcoco's per-category AP)
        return precision
    p = precision[..., -1] if precision.ndim == 5 else precision
    p = p[..., area_idx]  # (T, R, K) view
    valid = p > -1
    return np.where(valid, p, 0.0).sum(axis=(0, 1)), valid.sum(axis=(0, 1))


def precision_ap(precision, cat_idx: Optional[Sequence[int]] = None, area_idx: int = 0) -> float:
    """AP as lvis-api/pycocotools summarize it over the given categories (nan when undefined).

    ``precision`` is a precision array or the ``(sums, counts)`` of :func:`category_sums`.
    """
    sums, counts = precision if isinstance(precision, tuple) else category_sums(precision, area_idx)
    if cat_idx is not None:
        idx = np.asarray(cat_idx, dtype=np.int64)
        sums, counts = sums[idx], counts[idx]
    n = counts.sum()
    return float(sums.sum() / n) if n else float("nan")


def per_category_ap(precision) -> np.ndarray:
    """(K,) AP per category over IoU 0.5:0.95, area 'all'; nan for categories without GT."""
    sums, counts = precision if isinstance(precision, tuple) else category_sums(precision)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def write_per_category_csv(path: str, rows: Iterable[dict]) -> None:
    """Columns: category_id, name, frequency, train_instances, train_images, AP (percent, empty=nan)."""
    import csv

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    cols = ["category_id", "name", "frequency", "train_instances", "train_images", "AP"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            r = dict(r)
            ap = r.get("AP")
            r["AP"] = "nan" if ap is None or not np.isfinite(ap) else f"{ap:.4f}"
            w.writerow({k: r.get(k, "") for k in cols})


def format_table(results: Dict[str, float], title: str = "") -> str:
    from tabulate import tabulate

    keys = list(results)
    vals = ["nan" if not np.isfinite(results[k]) else f"{results[k]:.3f}" for k in keys]
    table = tabulate([vals], headers=keys, tablefmt="pipe", stralign="center", numalign="center")
    return (title + "\n" if title else "") + table
