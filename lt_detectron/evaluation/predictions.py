"""Where predictions go: per-rank transfer files and the standard results json.

- :class:`RankPredictionStore`: in a distributed evaluation each rank writes its detection matrix
  (``.npy``, loaded with ``allow_pickle=False``) and masks (json) to a folder; rank 0 reads them all
  and removes them. Nothing is gathered through ``comm.gather`` and nothing is pickled.
- :func:`write_results_json`: Detectron2's results file (``lvis_instances_results.json`` /
  ``coco_instances_results.json``): a list of ``{"image_id", "category_id" (dataset id), "bbox"
  [x, y, w, h], "score"[, "segmentation" (RLE)]}``. Floats are written with Python's ``repr``, so
  reading the file back gives the evaluated values bit for bit.
- :func:`load_results_json`: such a file back as a detection matrix + RLEs, with errors that name
  the file and the fix.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from json.encoder import encode_basestring_ascii
from typing import Iterable, List, Optional, Tuple

import numpy as np

__all__ = ["RankPredictionStore", "write_results_json", "load_results_json", "results_file_name", "ResultsFileError"]

COLUMNS = ("image_id", "x", "y", "w", "h", "score", "category_id")  # of a detection matrix


class ResultsFileError(ValueError):
    """A results json that cannot be evaluated; the message names the file and the fix."""


def results_file_name(protocol: str) -> str:
    """``lvis_instances_results.json`` / ``coco_instances_results.json`` (Detectron2's names)."""
    return f"{protocol}_instances_results.json"


# ---------------------------------------------------------------------------- per-rank transfer
class RankPredictionStore:
    """Per-rank prediction files in a folder shared by the ranks of one machine (or a shared FS).

    ``directory``: where to write (e.g. ``output_dir/lt_predictions``); ``None`` makes a temporary
    folder on rank 0 whose path is broadcast (a few bytes) to the other ranks. :meth:`cleanup`
    removes the files (and a temporary folder) once rank 0 has read them.
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

    def _paths(self, rank: int) -> Tuple[str, str]:
        base = os.path.join(self._dir, f"{self._prefix}_rank{rank}")
        return base + ".npy", base + "_segm.json"

    def write(self, dets: np.ndarray, rles: Optional[List[dict]]) -> None:
        """Every rank calls this (collective when the folder is temporary)."""
        from detectron2.utils import comm

        self._resolve_dir()
        path, rpath = self._paths(comm.get_rank())
        np.save(path + ".part.npy", np.ascontiguousarray(dets, dtype=np.float64), allow_pickle=False)
        os.replace(path + ".part.npy", path)
        if rles is not None:
            with open(rpath + ".part", "w") as f:
                json.dump([_rle_to_json(r) for r in rles], f)
            os.replace(rpath + ".part", rpath)

    def read_all(self, world_size: int, with_masks: bool) -> Tuple[np.ndarray, Optional[List[dict]]]:
        """On rank 0, after a barrier: every rank's predictions, concatenated in rank order."""
        arrs, rles = [], [] if with_masks else None
        for r in range(world_size):
            path, rpath = self._paths(r)
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"Predictions of rank {r} not found at {path}: in multi-machine runs output_dir "
                    "must be on a file system shared by all ranks."
                )
            arrs.append(np.load(path, allow_pickle=False))
            if with_masks:
                with open(rpath) as f:
                    rles.extend(_rle_from_json(x) for x in json.load(f))
        dets = np.concatenate(arrs, 0) if arrs else np.zeros((0, 7))
        return dets, rles

    def cleanup(self, world_size: int) -> None:
        """Remove the per-rank files (rank 0, after reading); a temporary folder goes entirely."""
        if self._dir is None:
            return
        if self._tmp:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
            return
        for r in range(world_size):
            for p in self._paths(r):
                if os.path.isfile(p):
                    os.remove(p)
        try:
            os.rmdir(self._dir)  # only when empty
        except OSError:
            pass


def _rle_to_json(rle: dict) -> dict:
    """A COCO RLE as json: bytes ``counts`` (pycocotools' output) become text, flagged."""
    counts = rle["counts"]
    if isinstance(counts, bytes):
        return {"size": list(rle["size"]), "counts": counts.decode("ascii"), "bytes": True}
    return {"size": list(rle["size"]), "counts": counts}


def _rle_from_json(d: dict) -> dict:
    counts = d["counts"].encode("ascii") if d.get("bytes") else d["counts"]
    return {"size": d["size"], "counts": counts}


# ---------------------------------------------------------------------------- results json
def _rows(dets: np.ndarray, rles: Optional[List[dict]], start: int, stop: int) -> Iterable[str]:
    d = dets[start:stop]
    ids = d[:, 0].astype(np.int64).tolist()
    cats = d[:, 6].astype(np.int64).tolist()
    vals = d[:, 1:6].tolist()
    if rles is None:
        fmt = '{"image_id": %d, "category_id": %d, "bbox": [%r, %r, %r, %r], "score": %r}'
        return [fmt % (i, c, *v) for i, c, v in zip(ids, cats, vals)]
    fmt = '{"image_id": %d, "category_id": %d, "bbox": [%r, %r, %r, %r], "score": %r, "segmentation": ' \
          '{"size": [%d, %d], "counts": %s}}'
    out = []
    for k, (i, c, v) in enumerate(zip(ids, cats, vals)):
        r = rles[start + k]
        counts = r["counts"]
        counts = counts.decode("ascii") if isinstance(counts, bytes) else counts
        out.append(fmt % (i, c, *v, int(r["size"][0]), int(r["size"][1]), encode_basestring_ascii(counts)))
    return out


def write_results_json(path: str, dets: np.ndarray, rles: Optional[List[dict]] = None, chunk: int = 200_000) -> None:
    """Write a detection matrix ``(N, 7)`` ``[image_id, x, y, w, h, score, category_id]`` (+ RLEs) as
    Detectron2's results json, streamed in chunks, atomically (``path.part`` then rename)."""
    if rles is not None and len(rles) != len(dets):
        raise ValueError(f"{len(rles)} masks for {len(dets)} detections")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".part"
    with open(tmp, "w") as f:
        f.write("[")
        for start in range(0, len(dets), chunk):
            if start:
                f.write(", ")
            f.write(", ".join(_rows(dets, rles, start, min(start + chunk, len(dets)))))
        f.write("]")
    os.replace(tmp, path)


def _fail(path: str, msg: str) -> None:
    raise ResultsFileError(f"Results file {path}: {msg}")


def load_results_json(
    path: str,
    category_ids: Optional[Iterable[int]] = None,
    image_ids: Optional[Iterable[int]] = None,
    need_masks: bool = False,
) -> Tuple[np.ndarray, Optional[List[dict]]]:
    """Read a results json (Detectron2 / lvis-api / pycocotools format) as ``(dets (N, 7), rles)``.

    Args:
        path: the file.
        category_ids, image_ids: the ground truth's; every result must use them.
        need_masks: every result must carry an RLE ``segmentation`` (mask evaluation).

    ``rles`` is ``None`` when no result carries a segmentation. A result without ``bbox`` gets the
    box of its mask (as lvis-api's ``LVISResults`` does).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Results file not found: {path}. Evaluating with an output folder writes it there "
            "(inference/<dataset>/lvis_instances_results.json or coco_instances_results.json)."
        )
    try:
        with open(path) as f:
            res = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ResultsFileError(f"Results file {path} is not valid JSON ({e}); was it written completely?") from e
    if isinstance(res, dict):
        hint = (" It looks like a ground-truth file: pass it with --gt and the results as RESULTS."
                if "annotations" in res else "")
        _fail(path, "expected a list of result dicts {image_id, category_id, bbox, score[, segmentation]}, "
                    f"got an object with keys {sorted(res)[:6]}." + hint)
    if not isinstance(res, list):
        _fail(path, f"expected a list of result dicts, got {type(res).__name__}.")
    n = len(res)
    dets = np.zeros((n, 7), np.float64)
    has_seg = n > 0 and isinstance(res[0], dict) and "segmentation" in res[0]
    rles: Optional[List[dict]] = [] if has_seg else None
    for i, r in enumerate(res):
        if not isinstance(r, dict):
            _fail(path, f"entry {i} is a {type(r).__name__}, not a result dict.")
        try:
            dets[i, 0] = r["image_id"]
            dets[i, 6] = r["category_id"]
            dets[i, 5] = r["score"]
            seg = r.get("segmentation") if has_seg else None
            if has_seg:
                if not (isinstance(seg, dict) and "counts" in seg and "size" in seg):
                    _fail(path, f"entry {i}: 'segmentation' must be a COCO RLE {{size, counts}} (every "
                                "entry, as Detectron2 writes them); polygons are not supported.")
                rles.append({"size": list(seg["size"]), "counts": seg["counts"]})
            if "bbox" in r:
                dets[i, 1:5] = r["bbox"]
            elif has_seg:
                from pycocotools import mask as mask_util

                rle = dict(seg)
                if isinstance(rle["counts"], str):
                    rle["counts"] = rle["counts"].encode("ascii")
                dets[i, 1:5] = mask_util.toBbox(rle)
            else:
                _fail(path, f"entry {i} has neither 'bbox' nor 'segmentation'.")
        except KeyError as e:
            _fail(path, f"entry {i} lacks the key {e.args[0]!r} (each result needs image_id, category_id, "
                        "bbox, score).")
        except ResultsFileError:
            raise
        except (TypeError, ValueError) as e:
            _fail(path, f"entry {i} has a malformed value ({e}): {str(r)[:200]}")
    if not np.isfinite(dets).all():
        bad = int(np.nonzero(~np.isfinite(dets).all(1))[0][0])
        _fail(path, f"entry {bad} has a non-finite box or score.")
    if need_masks and rles is None:
        _fail(path, "mask evaluation needs a 'segmentation' in every result; evaluate boxes only (--tasks bbox).")
    if category_ids is not None and n:
        known = np.asarray(sorted(set(int(c) for c in category_ids)))
        cats = np.unique(dets[:, 6].astype(np.int64))
        unknown = cats[~np.isin(cats, known)]
        if len(unknown):
            hint = ""
            if cats.min() >= 0 and cats.max() < len(known) and not np.isin(cats, known).all():
                hint = (" They look like contiguous ids 0..C-1: write dataset ids (Detectron2's evaluators "
                        "map them back with metadata.thing_dataset_id_to_contiguous_id).")
            _fail(path, f"{len(unknown)} category id(s) are not in the ground truth: "
                        f"{unknown[:10].tolist()}{' ...' if len(unknown) > 10 else ''}.{hint}")
    if image_ids is not None and n:
        imgs = np.unique(dets[:, 0].astype(np.int64))
        unknown = imgs[~np.isin(imgs, np.asarray(list(image_ids), dtype=np.int64))]
        if len(unknown):
            _fail(path, f"{len(unknown)} image id(s) are not in the ground truth "
                        f"({unknown[:10].tolist()}{' ...' if len(unknown) > 10 else ''}): was it written for "
                        "another split (--dataset / --gt)?")
    return dets, rles
