"""Pieces shared by the LVIS and COCO-LT evaluators.

- :func:`instances_to_arrays`: Detectron2 ``Instances`` -> one ``(N, 7)`` float64 array
  ``[image_id, x, y, w, h, score, category_id]`` (the "detection matrix" the fast
  backends read without building a dict per detection) plus RLE masks.
- :class:`RankPredictionStore`: each rank writes its predictions to a file; rank 0
  reads them all. Nothing is gathered through ``comm.gather``.
- per-category AP and group AP from a COCO/LVIS ``precision`` array, the csv writer and
  the log table.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "instances_to_arrays",
    "RankPredictionStore",
    "load_gt_json",
    "category_sums",
    "precision_ap",
    "per_category_ap",
    "instance_bins",
    "write_per_category_csv",
    "format_table",
]


def load_gt_json(json_file: Optional[str], dataset_name: str = "") -> dict:
    """Read a COCO/LVIS ground-truth json with clear errors for the usual mistakes."""
    where = f" of dataset '{dataset_name}'" if dataset_name else ""
    if not json_file:
        raise ValueError(f"No ground-truth json_file in the metadata{where}; the evaluator needs one.")
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"Ground-truth json{where} not found: {json_file}")
    try:
        with open(json_file, "r") as f:
            gt = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"Ground-truth json{where} is not valid JSON: {json_file}: {e}") from e
    if not isinstance(gt, dict):
        raise ValueError(f"Ground-truth json{where} must be an object with images/annotations/categories: {json_file}")
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(gt.get(k), list)]
    if missing:
        raise ValueError(f"Ground-truth json{where} lacks the list(s) {missing}: {json_file}")
    return gt


def instances_to_arrays(
    instances,
    image_id: int,
    contiguous_to_dataset: np.ndarray,
    max_dets: Optional[int] = None,
    with_masks: bool = False,
) -> Tuple[np.ndarray, Optional[List[dict]]]:
    """Convert Detectron2 ``Instances`` of one image to a detection matrix (+ RLE masks).

    Boxes XYXY -> XYWH in float32 (as Detectron2's ``instances_to_coco_json``), scores,
    contiguous class -> dataset category id. With ``max_dets`` keeps the ``max_dets``
    highest scores (ties: earlier detection first, like lvis-api's stable sort) in their
    original order, so every backend sees the same detections.
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
        import pycocotools.mask as mask_util

        masks = instances.pred_masks
        if keep is not None:
            import torch

            masks = masks[torch.as_tensor(keep, device=masks.device)]
        m = masks.detach().cpu().numpy().astype(np.uint8, copy=False)
        # (N, H, W) -> Fortran-ordered (H, W, N): one C call encodes all masks.
        fm = np.ascontiguousarray(m.transpose(0, 2, 1)).transpose(2, 1, 0)
        rles = mask_util.encode(fm) if len(m) else []
        for r in rles:
            r["counts"] = r["counts"].decode("utf-8")
    return out, rles


class RankPredictionStore:
    """Per-rank prediction files in a folder shared by the ranks of one machine (or a shared FS).

    ``directory``: where to write (e.g. ``output_dir/lt_predictions``); ``None`` makes a
    temporary folder on rank 0 whose path is broadcast (a few bytes) to the other ranks and
    removed after reading.
    """

    def __init__(self, directory: Optional[str], prefix: str):
        self._dir = directory
        self._prefix = prefix
        self._tmp = directory is None

    def _resolve_dir(self) -> str:
        from detectron2.utils import comm

        if self._dir is None:
            path = tempfile.mkdtemp(prefix="lt_eval_") if comm.get_rank() == 0 else None
            if comm.get_world_size() > 1:
                path = comm.all_gather(path)[0]
            self._dir = path
        os.makedirs(self._dir, exist_ok=True)
        return self._dir

    def write(self, dets: np.ndarray, rles: Optional[List[dict]]) -> None:
        """Every rank calls this (collective when the folder is temporary)."""
        from detectron2.utils import comm

        d = self._resolve_dir()
        rank = comm.get_rank()
        path = os.path.join(d, f"{self._prefix}_rank{rank}.npy")
        np.save(path + ".part.npy", dets)
        os.replace(path + ".part.npy", path)
        if rles is not None:
            # json, not pickle: reading a prediction file never runs code
            rpath = os.path.join(d, f"{self._prefix}_rank{rank}_segm.json")
            with open(rpath + ".part", "w") as f:
                json.dump([_rle_to_json(r) for r in rles], f)
            os.replace(rpath + ".part", rpath)

    def read_all(self, world_size: int, with_masks: bool) -> Tuple[np.ndarray, Optional[List[dict]]]:
        """On rank 0, after a barrier: every rank's predictions, concatenated in rank order."""
        arrs, rles = [], [] if with_masks else None
        for r in range(world_size):
            path = os.path.join(self._dir, f"{self._prefix}_rank{r}.npy")
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"Predictions of rank {r} not found at {path}: in multi-machine runs output_dir "
                    "must be on a file system shared by all ranks."
                )
            arrs.append(np.load(path))
            if with_masks:
                with open(os.path.join(self._dir, f"{self._prefix}_rank{r}_segm.json")) as f:
                    rles.extend(_rle_from_json(x) for x in json.load(f))
        dets = np.concatenate(arrs, 0) if arrs else np.zeros((0, 7))
        return dets, rles

    def cleanup(self) -> None:
        if self._tmp and self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def _rle_to_json(rle: dict) -> dict:
    """A COCO RLE as json: bytes ``counts`` (pycocotools' output) become text, flagged."""
    counts = rle["counts"]
    if isinstance(counts, bytes):
        return {"size": list(rle["size"]), "counts": counts.decode("ascii"), "bytes": True}
    return {"size": list(rle["size"]), "counts": counts}


def _rle_from_json(d: dict) -> dict:
    counts = d["counts"].encode("ascii") if d.get("bytes") else d["counts"]
    return {"size": d["size"], "counts": counts}


def category_sums(precision: np.ndarray, area_idx: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Per category: sum and number of valid (> -1) precision entries over IoU x recall.

    ``precision`` is (T, R, K, A) (lvis-api) or (T, R, K, A, M) (COCO; last max-dets used).
    Group AP = sums[idx].sum() / counts[idx].sum(), exactly lvis-api's/pycocotools'
    ``summarize`` (mean of the valid entries) restricted to those categories.
    """
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


def instance_bins(counts: np.ndarray, edges: Sequence[int] = (10, 100, 1000), lo0: int = 0):
    """[(lo, hi, contiguous ids)] for bins [lo0, e0), [e0, e1), ..., [e_last, inf); empty bins kept."""
    counts = np.asarray(counts)
    bounds = [lo0] + list(edges) + [np.inf]
    out = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        ids = np.nonzero((counts >= lo) & (counts < hi))[0]
        out.append((int(lo), hi if hi == np.inf else int(hi), ids))
    return out


def bin_label(lo, hi) -> str:
    return f"[{int(lo)},{'inf' if hi == np.inf else int(hi)})"


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
