"""Reading a results json back: :func:`load_results_json` returns Detectron2's results file
(written by :func:`~.predictions.write_results_json`) as a detection matrix + RLEs, with errors that
name the file and the fix."""

from __future__ import annotations

import json
import os
from typing import Iterable, List, Optional, Tuple

import numpy as np

from .common import gc_paused, mask_boxes_and_areas
from .predictions import ResultsFileError

__all__ = ["load_results_json"]


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
    with gc_paused():
        return _load_results(path, category_ids, image_ids, need_masks)


def _load_results(path, category_ids, image_ids, need_masks):
    try:
        with open(path, "rb") as f:
            data = f.read()
        try:
            import orjson

            res = orjson.loads(data)
        except (
            ImportError,
            ValueError,
        ):  # no orjson, or NaN/Infinity (which the standard library reads)
            res = json.loads(data)
        del data
    except (
        ValueError,
        UnicodeDecodeError,
    ) as e:  # json's and orjson's decode errors are ValueErrors
        raise ResultsFileError(
            f"Results file {path} is not valid JSON ({e}); was it written completely?"
        ) from e
    except RecursionError:  # the standard library's parser recurses once per nesting level
        raise ResultsFileError(
            f"Results file {path} nests lists/objects too deeply to be parsed: a results file is one "
            "list of flat result dicts {image_id, category_id, bbox, score[, segmentation]}. "
            "Pass the results json that Detectron2 / lvis-api / pycocotools write."
        ) from None
    if isinstance(res, dict):
        hint = (
            " It looks like a ground-truth file: pass it with --gt and the results as RESULTS."
            if "annotations" in res
            else ""
        )
        _fail(
            path,
            "expected a list of result dicts {image_id, category_id, bbox, score[, segmentation]}, "
            f"got an object with keys {sorted(res)[:6]}." + hint,
        )
    if not isinstance(res, list):
        _fail(path, f"expected a list of result dicts, got {type(res).__name__}.")
    n = len(res)
    has_seg = n > 0 and isinstance(res[0], dict) and "segmentation" in res[0]
    dets, rles = _fast_columns(res, has_seg)
    if dets is None:  # something is off: the entry-by-entry reading names it
        dets, rles = _checked_columns(path, res, has_seg)
    del res
    if not np.isfinite(dets).all():
        bad = int(np.nonzero(~np.isfinite(dets).all(1))[0][0])
        _fail(path, f"entry {bad} has a non-finite box or score.")
    if need_masks and rles is None:
        _fail(
            path,
            "mask evaluation needs a 'segmentation' in every result; evaluate boxes only (--tasks bbox).",
        )
    if category_ids is not None and n:
        known = np.asarray(sorted(set(int(c) for c in category_ids)))
        cats = np.unique(dets[:, 6].astype(np.int64))
        unknown = cats[~np.isin(cats, known)]
        if len(unknown):
            hint = ""
            if cats.min() >= 0 and cats.max() < len(known):
                hint = (
                    " They look like contiguous ids 0..C-1: write dataset ids (Detectron2's evaluators "
                    "map them back with metadata.thing_dataset_id_to_contiguous_id)."
                )
            _fail(
                path,
                f"{len(unknown)} category id(s) are not in the ground truth: "
                f"{unknown[:10].tolist()}{' ...' if len(unknown) > 10 else ''}.{hint}",
            )
    if image_ids is not None and n:
        imgs = np.unique(dets[:, 0].astype(np.int64))
        unknown = imgs[~np.isin(imgs, np.asarray(list(image_ids), dtype=np.int64))]
        if len(unknown):
            _fail(
                path,
                f"{len(unknown)} image id(s) are not in the ground truth "
                f"({unknown[:10].tolist()}{' ...' if len(unknown) > 10 else ''}): was it written for "
                "another split (--dataset / --gt)?",
            )
    return dets, rles


def _fast_columns(res: list, has_seg: bool):
    """The columns of well-formed results (Detectron2's: every key in every entry), else ``(None, None)``."""
    try:
        dets = np.empty((len(res), 7), np.float64)
        dets[:, 0] = [r["image_id"] for r in res]
        dets[:, 6] = [r["category_id"] for r in res]
        dets[:, 5] = [r["score"] for r in res]
        dets[:, 1:5] = np.asarray([r["bbox"] for r in res], dtype=np.float64).reshape(len(res), 4)
        rles = None
        if has_seg:
            rles = [
                {"size": [int(x) for x in s["size"]], "counts": s["counts"]}
                for s in (r["segmentation"] for r in res)
            ]
            if not all(isinstance(r["counts"], str) for r in rles):
                return None, None
    except (KeyError, TypeError, ValueError, IndexError, AttributeError):
        return None, None
    return dets, rles


def _checked_columns(path: str, res: list, has_seg: bool):
    """Entry by entry, with an error naming the first bad entry (and the mask box when ``bbox`` is absent)."""
    n = len(res)
    dets = np.zeros((n, 7), np.float64)
    rles: Optional[List[dict]] = [] if has_seg else None
    no_box = []  # entries whose box is their mask's (read below, all at once)
    for i, r in enumerate(res):
        if not isinstance(r, dict):
            _fail(path, f"entry {i} is a {type(r).__name__}, not a result dict.")
        try:
            dets[i, 0] = r["image_id"]
            dets[i, 6] = r["category_id"]
            dets[i, 5] = r["score"]
            seg = r.get("segmentation") if has_seg else None
            if has_seg:
                if not (
                    isinstance(seg, dict) and isinstance(seg.get("counts"), str) and "size" in seg
                ):
                    _fail(
                        path,
                        f"entry {i}: 'segmentation' must be a compressed COCO RLE {{size, counts}} in every "
                        "entry (as Detectron2 writes them); polygons are not supported.",
                    )
                rles.append({"size": [int(x) for x in seg["size"]], "counts": seg["counts"]})
            if "bbox" in r:
                dets[i, 1:5] = r["bbox"]
            elif has_seg:
                no_box.append(i)
            else:
                _fail(path, f"entry {i} has neither 'bbox' nor 'segmentation'.")
        except KeyError as e:
            _fail(
                path,
                f"entry {i} lacks the key {e.args[0]!r} (each result needs image_id, category_id, "
                "bbox, score).",
            )
        except ResultsFileError:
            raise
        except (TypeError, ValueError) as e:
            _fail(path, f"entry {i} has a malformed value ({e}): {str(r)[:200]}")
    if no_box:
        dets[no_box, 1:5] = mask_boxes_and_areas([rles[i] for i in no_box])[0]
    return dets, rles
