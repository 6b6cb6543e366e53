"""COCO RLEs straight from ROI-level mask probabilities, without full-image bitmaps.

A Mask R-CNN head predicts an ``M x M`` probability map per detection (after the sigmoid);
Detectron2 pastes it into a full-image bitmap (``detectron2.layers.paste_masks_in_image``:
bilinear ``grid_sample`` with ``align_corners=False`` over the box's pixel region widened by one
pixel, threshold ``>= 0.5``), and an evaluator run-length encodes that bitmap again.
:func:`encode_roi_masks` gives the very same RLEs (the same ``counts`` string as
``pycocotools.mask.encode`` of the pasted bitmap) without ever building a pixel array:

- the pasted value is bilinear in the source coordinates ``(ix, iy)`` of a pixel, so along one image
  column (fixed ``ix``) it is piecewise linear in ``iy`` with knots at the mask rows. A column's pixels
  change class only inside the segments whose 2 x 2 cell of mask values straddles the threshold, and
  the row of each change is solved in closed form: the work is per column and per boundary cell,
  not per pixel;
- every change is checked in float64 against the pixel values on both sides of it; a column where a
  value lies nearer the threshold than float32 rounding in ``grid_sample`` could move it (a bound
  from the mask's side and slopes, ``roi_mask_sampling.value_error_bound``: a few 1e-6 for a
  28 x 28 probability map) is recomputed exactly with ``torch.nn.functional.grid_sample`` on the
  same float32 sampling grid as Detectron2 (:mod:`.roi_mask_sampling`). Two changes between the
  same two pixels cancel (compiled kernels) or send their column to ``grid_sample`` too (NumPy path);
- the run lengths of all masks are written in COCO's compressed ``counts`` format (``rleToString``
  of the COCO mask API: 5-bit groups, differences to the count two back from the fourth count on).

Two implementations of the same algorithm give the same strings: compiled kernels
(``_roi_rle.pyx`` and ``_coco_rle.pyx``, built by ``setup.py`` where a C compiler is found; one
mask and one column at a time; mask evaluation end to end 4-5x faster than with the other,
``benchmarks/README.md``) and a NumPy path (whole arrays at once), used when the kernels are not
built. :func:`compiled_encoder` says which one runs. The compiled path runs in two stages, the
kernel and the strings (:func:`kernel_part`, no GIL) and :func:`finish_stage` (``grid_sample``'s
columns, Python), which :mod:`.roi_mask_pipeline` overlaps from image to image.
"""

from __future__ import annotations

import functools
import os
import threading
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .roi_mask_sampling import ARITH_ERROR, COORD_ERROR, exact_changes, roi_mask_regions
from .roi_masks_numpy import encode_numpy

try:
    from . import _coco_rle, _roi_rle
except ImportError:  # not built (no C compiler at install): the NumPy path
    _coco_rle = _roi_rle = None

__all__ = ["encode_roi_masks", "compiled_encoder"]

_CHUNK = 1024  # masks per pass (NumPy path: temporaries of a few MB, reused by the allocator)
_PARALLEL_MIN = 128  # masks from which the kernel runs on two threads
_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _as_numpy(x, dtype) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(x, dtype=dtype)


def compiled_encoder() -> bool:
    """Whether :func:`encode_roi_masks` runs the compiled kernels (built by ``setup.py``; else NumPy).
    Reinstall with a C compiler (``pip install -e .``) to build them."""
    return _roi_rle is not None


def _exact_flips(masks32, boxes, regions, unsure, heights, threshold):
    """The changes of the columns the kernel left to ``grid_sample``: (mask, index of the kernel's
    changes they go before, position) of each."""
    u_mask, u_col, u_at = unsure
    y0, y1 = regions[u_mask, 1], regions[u_mask, 3]
    fu, fr = exact_changes(masks32, boxes, u_mask, u_col, y0, y1, threshold)
    return u_mask[fu], u_at[fu], u_col[fu] * heights[u_mask[fu]] + y0[fu] + fr


def kernel_part(m32, b, regions, heights, widths, threshold, s: int, e: int):
    """The kernel on masks ``s:e``: ``(flips, strings)``, its ``column_flips`` (no GIL) and the
    strings written from them (no GIL but for making the ``str`` objects), right for every mask
    without columns left to ``grid_sample``; :func:`finish_stage` rewrites the others."""
    flips = _roi_rle.column_flips(
        m32[s:e], b[s:e], regions[s:e], heights[s:e], threshold, COORD_ERROR, ARITH_ERROR
    )
    area = np.ascontiguousarray(heights[s:e] * widths[s:e], np.int64)
    return flips, _coco_rle.rle_strings(flips[0], flips[1], area)


def _column_flips(m32, b, regions, heights, widths, threshold, threads: int):
    """:func:`kernel_part` over ``threads`` parts of the masks at once: ``(parts, bounds)``, part
    ``j`` for masks ``bounds[j]:bounds[j + 1]`` (as :func:`finish_stage` takes them)."""
    n = len(m32)
    bounds = np.linspace(0, n, threads + 1).astype(np.int64)
    parts = [None] * threads
    errors = []

    def run(j):
        try:
            parts[j] = kernel_part(
                m32, b, regions, heights, widths, threshold, bounds[j], bounds[j + 1]
            )
        except BaseException as exc:  # re-raised in the calling thread
            errors.append(exc)

    workers = [threading.Thread(target=run, args=(j,), daemon=True) for j in range(1, threads)]
    for t in workers:
        t.start()
    run(0)
    for t in workers:
        t.join()
    if errors:
        raise errors[0]
    return parts, bounds


def finish_stage(m32, b, regions, heights, widths, threshold, parts, bounds) -> List[dict]:
    """The compiled path's second stage, after :func:`kernel_part` has given ``parts[j]`` for masks
    ``bounds[j]:bounds[j + 1]``: the columns ``grid_sample`` settles, the strings of their masks
    written again with those changes, and the RLE dicts."""
    strings: List[str] = [t for _, part in parts for t in part]
    u_mask = np.concatenate([f[2] + s for (f, _), s in zip(parts, bounds)])
    if len(u_mask):
        unsure = (
            u_mask,
            np.concatenate([f[3] for f, _ in parts]),
            np.concatenate([f[4] for f, _ in parts]),
        )
        # (mask, index of its part's changes they go before, position), masks in order
        ex_mask, ex_at, ex_pos = _exact_flips(m32, b, regions, unsure, heights, threshold)
        cuts = np.searchsorted(ex_mask, bounds)
        for j, (flips, _) in enumerate(parts):
            if len(flips[2]):
                x = slice(cuts[j], cuts[j + 1])
                s = int(bounds[j])
                redo = _rewrite(flips, heights[s:], widths[s:], ex_mask[x] - s, ex_at[x], ex_pos[x])
                for r, t in redo:
                    strings[s + r] = t
    return _rle_dicts(heights, widths, strings)


def _rewrite(flips, heights, widths, ex_mask, ex_at, ex_pos):
    """``(mask, string)`` of the masks of one part that have columns left to ``grid_sample``,
    written from the kernel's changes of those masks and the extra ones (``ex_*``, indices in the
    part, in order)."""
    pos, counts, u_mask = flips[0], flips[1], flips[2]
    redo = np.unique(u_mask)
    starts = np.cumsum(counts) - counts
    sub_counts = counts[redo]
    sub_starts = np.cumsum(sub_counts) - sub_counts
    take = np.repeat(starts[redo] - sub_starts, sub_counts) + np.arange(sub_counts.sum())
    k = np.searchsorted(redo, ex_mask)  # the extra changes' masks among those rewritten
    sub_at = ex_at - starts[ex_mask] + sub_starts[k]
    area = np.ascontiguousarray(heights[redo] * widths[redo], np.int64)
    sub = _coco_rle.rle_strings(
        np.ascontiguousarray(pos[take]), sub_counts, area, k, sub_at, np.ascontiguousarray(ex_pos)
    )
    return zip(redo.tolist(), sub)


@functools.lru_cache(maxsize=4096)
def _size(h: int, w: int) -> Tuple[int, int]:
    """One ``(H, W)`` tuple per image size: once the collector has seen it (and untracked it, as it
    does every tuple of atoms), the RLE dicts that hold it are never tracked."""
    return (h, w)


def _rle_dicts(heights, widths, strings) -> List[dict]:
    """``{"size": (H, W), "counts": str}``: holding only an untracked tuple and a string, a dict is
    not tracked by the garbage collector, which otherwise rescans the millions of them an LVIS
    evaluation keeps (several times the time of building them)."""
    if len(heights) and (heights == heights[0]).all() and (widths == widths[0]).all():
        size = _size(int(heights[0]), int(widths[0]))  # one image: the common case
        return [{"size": size, "counts": c} for c in strings]
    sizes = {}
    hw = [
        sizes.get(x) or sizes.setdefault(x, _size(*x))
        for x in zip(heights.tolist(), widths.tolist())
    ]
    return [{"size": size, "counts": c} for size, c in zip(hw, strings)]


def prepare(masks, boxes, image_size, compiled: Optional[bool] = None):
    """Checked inputs of :func:`encode_roi_masks`: ``(m32, boxes, heights, widths, kernels)``, float32
    ``(N, M, M)`` masks and ``(N, 4)`` boxes, one height and width per mask (contiguous int64), and
    whether the compiled kernels encode them."""
    m32 = _as_numpy(masks, np.float32)
    if m32.ndim == 4 and m32.shape[1] == 1:
        m32 = m32[:, 0]
    b = _as_numpy(boxes, np.float32).reshape(-1, 4)
    if m32.ndim != 3 or m32.shape[1] != m32.shape[2] or len(m32) != len(b):
        raise ValueError(
            f"encode_roi_masks needs (N, M, M) or (N, 1, M, M) masks and (N, 4) boxes, got masks "
            f"{tuple(m32.shape)} and boxes {tuple(b.shape)}"
        )
    n = len(b)
    sizes = np.asarray(image_size, np.int64)
    if sizes.ndim == 1:
        sizes = np.broadcast_to(sizes, (n, 2))
    if sizes.shape != (n, 2):
        raise ValueError(f"image_size must be (H, W) or one (H, W) per mask, got {image_size!r}")
    heights, widths = np.ascontiguousarray(sizes[:, 0]), np.ascontiguousarray(sizes[:, 1])
    if compiled and _roi_rle is None:
        raise RuntimeError(
            "encode_roi_masks(compiled=True): the compiled kernels (lt_detectron/evaluation/"
            "_roi_rle.pyx) are not built; reinstall with Cython and a C compiler (pip install -e .)"
        )
    use_kernels = _roi_rle is not None and compiled is not False
    if use_kernels and m32.shape[1] > _roi_rle.MAX_MASK_SIDE:
        if compiled:
            raise ValueError(
                f"encode_roi_masks(compiled=True): the kernels take masks of side <= "
                f"{_roi_rle.MAX_MASK_SIDE}, got {m32.shape[1]}; use compiled=None (NumPy path)"
            )
        use_kernels = False
    return m32, b, heights, widths, use_kernels


def encode_roi_masks(
    masks: Union[torch.Tensor, np.ndarray],
    boxes: Union[torch.Tensor, np.ndarray],
    image_size: Union[Tuple[int, int], Sequence[Tuple[int, int]]],
    threshold: float = 0.5,
    compiled: Optional[bool] = None,
) -> List[dict]:
    """COCO RLEs ``{"size": (H, W), "counts": str}`` of ROI-level masks as Detectron2 would paste them.

    Args:
        masks: ``(N, M, M)`` or ``(N, 1, M, M)`` probabilities (the mask head's output after the
            sigmoid), float.
        boxes: ``(N, 4)`` XYXY boxes in the output image's coordinates (float32, as
            ``detector_postprocess`` leaves them).
        image_size: ``(H, W)`` of the output image, or one ``(H, W)`` per mask.
        threshold: a pixel is in the mask when its pasted value is ``>= threshold``.
        compiled: ``None`` (default) runs the compiled kernels when they are built, ``False`` the
            NumPy path; ``True`` requires the kernels. Both give the same strings.

    Returns:
        one RLE per mask (``size`` a tuple: see :func:`_rle_dicts`) whose ``counts`` equals
        ``pycocotools.mask.encode(np.asfortranarray(paste_masks_in_image(masks, boxes, (H, W),
        threshold).numpy()))[i]["counts"].decode()``. Empty regions give an all-zero mask.

    Image after image, :class:`~.roi_mask_pipeline.RoiMaskPipeline` gives the same RLEs with one
    image's kernel running while the caller finishes the image before (the evaluators use it).
    """
    m32, b, heights, widths, use_kernels = prepare(masks, boxes, image_size, compiled)
    if use_kernels:
        # two threads from _PARALLEL_MIN masks on, where a second core is free (an image's 300
        # masks take about a millisecond; a thread costs tens of microseconds)
        threads = 2 if len(m32) >= _PARALLEL_MIN and _CORES > 1 else 1
        regions = roi_mask_regions(b, heights, widths)
        parts, bounds = _column_flips(m32, b, regions, heights, widths, float(threshold), threads)
        return finish_stage(m32, b, regions, heights, widths, float(threshold), parts, bounds)
    return encode_numpy_dicts(m32, b, heights, widths, float(threshold))


def encode_numpy_dicts(m32, b, heights, widths, threshold) -> List[dict]:
    """The NumPy path, :data:`_CHUNK` masks at a time."""
    out: List[dict] = []
    for s in range(0, len(b), _CHUNK):
        e = min(len(b), s + _CHUNK)
        h, w = heights[s:e], widths[s:e]
        out.extend(_rle_dicts(h, w, encode_numpy(m32[s:e], b[s:e], h, w, threshold)))
    return out
