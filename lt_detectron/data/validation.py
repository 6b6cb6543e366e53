"""Checks of annotation boxes and image files, with errors that name the file, image and annotation.

Boxes. A box is *degenerate* when it is non-finite (NaN/inf), has a width or height <= 0, or
lies more than ``tolerance`` (1 px) outside its image. Tiny boxes (0 < w or h < 1 px) and boxes
at most 1 px outside the image are valid: real LVIS/COCO contain them and detectron2 trains on
them. What happens to degenerate boxes of a training set is the dataset's ``bad_boxes`` policy
(``register_lt_dataset(..., bad_boxes=...)``, metadata key ``bad_boxes``):

- ``"drop"`` (default): removed from the dataset dicts, counted, and logged per file with the
  first few image / annotation ids. Dropped boxes are not counted in the class statistics.
- ``"error"``: a :class:`BadBoxError` naming the file, the image id and the annotation id.
- ``"clip"``: boxes outside the image are clipped to it; non-finite and empty boxes dropped.

Test sets: the evaluators read the ground truth from the json itself, so
:func:`check_json_boxes` rejects non-finite and negative-size boxes of a test json at startup.

Images. :class:`LTDatasetMapper` (:mod:`lt_detectron.data.mapper`) is detectron2's
``DatasetMapper`` whose image-read failures name the file, the dataset's image id and the fix.
"""

import itertools
import logging
import os
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np
from detectron2.structures import BoxMode

from .mapper import ImageReadError, LTDatasetMapper

__all__ = [
    "BAD_BOX_POLICIES",
    "BadBoxError",
    "BoxCheckReport",
    "DatasetFormatError",
    "ImageReadError",
    "LTDatasetMapper",
    "bad_box_reasons",
    "check_dicts_boxes",
    "check_json_boxes",
    "check_bad_boxes_policy",
]

logger = logging.getLogger(__name__)

BAD_BOX_POLICIES = ("drop", "error", "clip")
DEFAULT_BAD_BOXES = "drop"
OUT_OF_IMAGE_TOLERANCE = 1.0  # pixels

# reason codes
_OK, _NONFINITE, _EMPTY, _OUTSIDE = 0, 1, 2, 3
_REASON_TEXT = {
    _NONFINITE: "non-finite",
    _EMPTY: "width or height <= 0",
    _OUTSIDE: "more than 1 px outside the image",
}


class DatasetFormatError(ValueError):
    """An annotation file is missing or malformed (the message names the file and the fix)."""


class BadBoxError(DatasetFormatError):
    """A degenerate box under the ``"error"`` policy (names the file, image id and annotation id)."""


def check_bad_boxes_policy(policy: str, where: str = "bad_boxes") -> str:
    if policy not in BAD_BOX_POLICIES:
        raise ValueError(
            "%s must be one of %s, got %r" % (where, ", ".join(map(repr, BAD_BOX_POLICIES)), policy)
        )
    return policy


def bad_box_reasons(
    xywh: np.ndarray,
    width: np.ndarray,
    height: np.ndarray,
    tolerance: float = OUT_OF_IMAGE_TOLERANCE,
):
    """Reason code per box: 0 valid, 1 non-finite, 2 width/height <= 0, 3 outside the image.

    ``xywh`` is ``(N, 4)``; ``width``/``height`` ``(N,)`` image sizes (NaN: unknown, no check).
    """
    xywh = np.asarray(xywh, dtype=np.float64).reshape(-1, 4)
    out = np.zeros(len(xywh), dtype=np.int8)
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(xywh).all(axis=1)
        x, y, w, h = xywh.T
        empty = finite & ((w <= 0) | (h <= 0))
        outside = (
            finite
            & ~empty
            & (
                (x < -tolerance)
                | (y < -tolerance)
                | (x + w > width + tolerance)
                | (y + h > height + tolerance)
            )
        )
    out[~finite] = _NONFINITE
    out[empty] = _EMPTY
    out[outside] = _OUTSIDE
    return out


@dataclass
class BoxCheckReport:
    """What a box check found in one file (counts per reason, first examples)."""

    source: str
    num_boxes: int = 0
    num_nonfinite: int = 0
    num_empty: int = 0
    num_outside: int = 0
    num_dropped: int = 0
    num_clipped: int = 0
    examples: List[str] = field(default_factory=list)

    @property
    def num_bad(self) -> int:
        return self.num_nonfinite + self.num_empty + self.num_outside

    def describe(self) -> str:
        return (
            "%d degenerate of %d boxes in %s (non-finite: %d, width or height <= 0: %d, "
            "more than 1 px outside the image: %d); first: %s"
            % (
                self.num_bad,
                self.num_boxes,
                self.source,
                self.num_nonfinite,
                self.num_empty,
                self.num_outside,
                "; ".join(self.examples),
            )
        )


def _boxes_array(boxes: Sequence) -> Tuple[np.ndarray, np.ndarray]:
    """``(N, 4)`` float array of ``boxes`` and a mask of entries that are 4 numbers."""
    n = len(boxes)
    try:
        lengths = np.fromiter(map(len, boxes), dtype=np.int64, count=n)
        if (lengths == 4).all():
            return np.fromiter(
                itertools.chain.from_iterable(boxes), dtype=np.float64, count=4 * n
            ).reshape(n, 4), np.ones(n, bool)
    except (TypeError, ValueError):
        pass
    arr = np.full((n, 4), np.nan)
    ok = np.zeros(n, bool)
    for i, b in enumerate(boxes):
        try:
            if len(b) == 4:
                arr[i] = [float(v) for v in b]
                ok[i] = True
        except (TypeError, ValueError):
            pass
    return arr, ok


def _finish(report: BoxCheckReport, reasons: np.ndarray, describe_one, policy: str):
    report.num_nonfinite = int((reasons == _NONFINITE).sum())
    report.num_empty = int((reasons == _EMPTY).sum())
    report.num_outside = int((reasons == _OUTSIDE).sum())
    bad = np.nonzero(reasons)[0]
    report.examples = [
        describe_one(int(i)) + " (%s)" % _REASON_TEXT[int(reasons[i])] for i in bad[:5]
    ]
    if len(bad) and policy == "error":
        raise BadBoxError(
            report.describe() + ". Fix or remove these annotations, or register the dataset with "
            "bad_boxes='drop' (drop and count them) or 'clip' (clip boxes to the image)."
        )


def check_json_annotations(
    annotations: List[dict],
    image_sizes: dict,
    json_file: str,
    policy: str = DEFAULT_BAD_BOXES,
    tolerance: float = OUT_OF_IMAGE_TOLERANCE,
) -> Tuple[List[dict], BoxCheckReport]:
    """Check the boxes of a json's ``annotations`` (``image_sizes``: image id -> (h, w)).

    Returns the annotations to keep (the same list object when nothing is dropped; clipped
    boxes are replaced by new lists) and the report. ``policy="error"`` raises when the file has
    a degenerate box. An annotation without a 4-number ``bbox`` is a format error.
    """
    check_bad_boxes_policy(policy)
    n = len(annotations)
    report = BoxCheckReport(source=os.path.abspath(json_file), num_boxes=n)
    if n == 0:
        return annotations, report
    boxes, ok = _boxes_array(
        [a.get("bbox") if a.get("bbox") is not None else () for a in annotations]
    )
    hw = [image_sizes.get(a.get("image_id"), (np.nan, np.nan)) for a in annotations]
    hw = np.asarray(hw, dtype=np.float64).reshape(n, 2)
    if not ok.all():
        a = annotations[int(np.nonzero(~ok)[0][0])]
        raise DatasetFormatError(
            "annotation %s (image id %s) in %s has no valid 'bbox' [x, y, w, h] (got %r): fix the file"
            % (a.get("id"), a.get("image_id"), os.path.abspath(json_file), a.get("bbox"))
        )
    reasons = bad_box_reasons(boxes, hw[:, 1], hw[:, 0], tolerance)

    def one(i):
        a = annotations[i]
        return "image id %s, annotation id %s, bbox %s" % (
            a.get("image_id"),
            a.get("id"),
            a.get("bbox"),
        )

    _finish(report, reasons, one, policy)
    if not report.num_bad:
        return annotations, report
    keep = reasons == _OK
    replaced = {}
    if policy == "clip":
        for i in np.nonzero(reasons == _OUTSIDE)[0].tolist():
            h, w = hw[i]
            x0, y0, bw, bh = boxes[i]
            x1, y1, x0, y0 = min(x0 + bw, w), min(y0 + bh, h), max(x0, 0.0), max(y0, 0.0)
            if x1 > x0 and y1 > y0:
                replaced[i] = dict(annotations[i], bbox=[x0, y0, x1 - x0, y1 - y0])
                keep[i] = True
        report.num_clipped = len(replaced)
    report.num_dropped = int((~keep).sum())
    kept = [replaced.get(i, a) for i, (a, k) in enumerate(zip(annotations, keep.tolist())) if k]
    _log(report, policy)
    return kept, report


def _log(report: BoxCheckReport, policy: str):
    logger.warning(
        "bad_boxes=%r: %s -> dropped %d, clipped %d (see lt_detectron.data.validation)",
        policy,
        report.describe(),
        report.num_dropped,
        report.num_clipped,
    )


def check_dicts_boxes(
    dataset_dicts: List[dict],
    source: str,
    policy: str = DEFAULT_BAD_BOXES,
    tolerance: float = OUT_OF_IMAGE_TOLERANCE,
) -> BoxCheckReport:
    """Check the boxes of detectron2 dataset dicts in place (for loaders lt_detectron does not own).

    Boxes in ``XYWH_ABS`` and ``XYXY_ABS`` mode are checked (others are left alone). Under
    ``"drop"``/``"clip"`` the records' ``annotations`` lists are replaced where boxes go.
    The dicts carry no annotation ids: an annotation is named by the image id and its index.
    """
    check_bad_boxes_policy(policy)
    per_image = [d.get("annotations") or () for d in dataset_dicts]
    lengths = np.fromiter(map(len, per_image), dtype=np.int64, count=len(per_image))
    anns = list(itertools.chain.from_iterable(per_image))
    n = len(anns)
    report = BoxCheckReport(source=source, num_boxes=n)
    if n == 0:
        return report
    boxes, ok = _boxes_array([a.get("bbox") if a.get("bbox") is not None else () for a in anns])
    modes = np.fromiter(
        map(
            int,
            map(dict.get, anns, itertools.repeat("bbox_mode"), itertools.repeat(BoxMode.XYWH_ABS)),
        ),
        dtype=np.int64,
        count=n,
    )
    xyxy = modes == int(BoxMode.XYXY_ABS)
    boxes[xyxy, 2:] -= boxes[xyxy, :2]
    checked = (modes == int(BoxMode.XYWH_ABS)) | xyxy
    H = np.repeat(
        np.fromiter(
            (float(d.get("height", np.nan)) for d in dataset_dicts), np.float64, len(dataset_dicts)
        ),
        lengths,
    )
    W = np.repeat(
        np.fromiter(
            (float(d.get("width", np.nan)) for d in dataset_dicts), np.float64, len(dataset_dicts)
        ),
        lengths,
    )
    reasons = bad_box_reasons(boxes, W, H, tolerance)
    reasons[~ok] = _NONFINITE
    reasons[~checked & ok] = _OK
    img_of = np.repeat(np.arange(len(dataset_dicts)), lengths)
    starts = (
        np.concatenate(([0], np.cumsum(lengths)[:-1])) if len(lengths) else np.zeros(0, np.int64)
    )

    def one(i):
        r = int(img_of[i])
        return "image id %s (%s), annotation #%d of the image, bbox %s" % (
            dataset_dicts[r].get("image_id"),
            dataset_dicts[r].get("file_name"),
            i - starts[r],
            anns[i].get("bbox"),
        )

    _finish(report, reasons, one, policy)
    if not report.num_bad:
        return report
    for r in np.unique(img_of[reasons != _OK]).tolist():
        new = []
        for k, a in enumerate(dataset_dicts[r]["annotations"]):
            i = starts[r] + k
            if reasons[i] == _OK:
                new.append(a)
            elif reasons[i] == _OUTSIDE and policy == "clip":
                x0, y0, bw, bh = boxes[i]
                h, w = H[i], W[i]
                x1, y1, x0, y0 = min(x0 + bw, w), min(y0 + bh, h), max(x0, 0.0), max(y0, 0.0)
                if x1 > x0 and y1 > y0:
                    a = dict(a)
                    a["bbox"] = [x0, y0, x1, y1] if xyxy[i] else [x0, y0, x1 - x0, y1 - y0]
                    new.append(a)
                    report.num_clipped += 1
                    continue
                report.num_dropped += 1
            else:
                report.num_dropped += 1
        dataset_dicts[r]["annotations"] = new
    _log(report, policy)
    return report


def check_json_boxes(json_file: str, data: Optional[dict] = None) -> BoxCheckReport:
    """Startup check of a TEST json: non-finite or negative-size boxes are an error naming the file.

    The evaluators (hotcoco / lvis-api) read the ground truth from the file, so such boxes would
    otherwise crash evaluation after the whole inference. Zero-size and out-of-image boxes are
    only counted (real COCO/LVIS contain a few and evaluate fine). Parses the json once.
    """
    if data is None:
        from .json_categories import (
            read_json,
        )  # names the file and the fix for a missing / invalid json

        data = read_json(json_file)
    anns = data.get("annotations") or []
    n = len(anns)
    report = BoxCheckReport(source=json_file, num_boxes=n)
    if not n:
        return report
    boxes, ok = _boxes_array([a.get("bbox") if a.get("bbox") is not None else () for a in anns])
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(boxes).all(axis=1) & ok
        negative = finite & ((boxes[:, 2] < 0) | (boxes[:, 3] < 0))
        zero = finite & ~negative & ((boxes[:, 2] == 0) | (boxes[:, 3] == 0))
    bad = np.nonzero(~finite | negative)[0]
    report.num_nonfinite = int((~finite).sum())
    report.num_empty = int(negative.sum() + zero.sum())
    if len(bad):
        ex = [
            "image id %s, annotation id %s, bbox %s"
            % (anns[i].get("image_id"), anns[i].get("id"), anns[i].get("bbox"))
            for i in bad[:5]
        ]
        raise BadBoxError(
            "test annotation file %s has %d box(es) that are non-finite or have a negative width/height "
            "(first: %s). The evaluator reads this file and cannot score them: fix or remove these "
            "annotations before training or evaluating."
            % (os.path.abspath(json_file), len(bad), "; ".join(ex))
        )
    if zero.any():
        logger.warning(
            "%s: %d ground-truth box(es) with width or height 0 (kept; they match no detection)",
            json_file,
            int(zero.sum()),
        )
    return report
