"""Where Detectron2 pastes an ROI-level mask, and ``grid_sample``'s own decision for single columns.

``detectron2.layers.paste_masks_in_image`` (``_do_paste_mask``) samples an ``M x M`` mask with
bilinear ``grid_sample`` (``align_corners=False``, zero padding) at the pixels of the box's region
widened by one pixel. The encoders of :mod:`.roi_masks` decide most pixel classes in float64 from that
geometry (:func:`sampling_grid`, :func:`source_coordinate`) and leave the columns float32 rounding
could decide to :func:`exact_changes`, which samples them with ``grid_sample`` itself.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "roi_mask_regions",
    "sampling_grid",
    "source_coordinate",
    "exact_changes",
    "COORD_ERROR",
    "ARITH_ERROR",
    "value_error_bound",
]

# How far grid_sample's float32 value of a pixel can be from the float64 value the encoders compute
# on the same float32 grid (a pixel whose float64 value is nearer the threshold than this is left to
# grid_sample itself): its source coordinate ``(g + 1) * M / 2 - 1/2`` takes three float32 roundings,
# each at most half a unit in the last place of a number up to M (or 2 before the scaling), at most
# 1.8e-7 x M off in all, which moves the value by that times the mask's slope (the largest difference
# of two neighbouring mask values, across and down, in the cells the coordinate can fall in); its
# bilinear sum of four float32 products of float32 weights is off by at most ~4e-7 x the largest
# |value|. The constants leave a margin over both (1.7x and 2.5x); on random masks and points
# grid_sample's errors stay under a fifth of the bound (tests/evaluation/test_roi_mask_sampling.py).
COORD_ERROR = 3e-7  # per unit of mask side and of slope
ARITH_ERROR = 1e-6  # per unit of max(1, largest |value|)


def value_error_bound(m: int, slope_x, slope_y, peak):
    """The bound above for an ``m x m`` mask, slopes ``slope_x`` (across) and ``slope_y`` (down) and
    largest ``|value|`` ``peak`` (scalars or arrays)."""
    return COORD_ERROR * m * (slope_x + slope_y) + ARITH_ERROR * np.maximum(1.0, peak)


def roi_mask_regions(boxes: np.ndarray, heights: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """``(N, 4)`` int64 ``[x0, y0, x1, y1)`` pixel regions Detectron2 pastes each box into:
    ``floor(x0) - 1`` clamped at 0 to ``ceil(x1) + 1`` clamped at the width (same for y), computed in
    float32 like ``_do_paste_mask`` (empty when ``x1 <= x0``)."""
    b = np.asarray(boxes, np.float32)
    lo = np.maximum(np.floor(b[:, :2]) - np.float32(1), 0).astype(np.int64)
    hi = np.minimum(np.ceil(b[:, 2:]) + np.float32(1), np.stack([widths, heights], 1)).astype(
        np.int64
    )
    return np.concatenate([lo, hi], 1)


def sampling_grid(pix: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Detectron2's normalised float32 sampling coordinate of pixel index ``pix`` in ``[lo, hi]``."""
    f = np.float32
    return ((pix.astype(f) + f(0.5)) - lo) / (hi - lo) * f(2) - f(1)


def source_coordinate(g: np.ndarray, m: int) -> np.ndarray:
    """grid_sample's source coordinate (align_corners=False) in float64."""
    return (g.astype(np.float64) + 1.0) * (m / 2.0) - 0.5


def exact_changes(masks32, boxes, i, cols, y0, y1, threshold):
    """Class changes of whole region columns by ``grid_sample`` itself: (column, row offset) pairs,
    in order; at most ~2M sampled pixels at a time (columns of one mask constant at the threshold
    all land here)."""
    cu, ru = [], []
    step = max(1, 2_000_000 // max(1, int((y1 - y0).max())))
    for s in range(0, len(i), step):
        sl = slice(s, s + step)
        cls = exact_columns(masks32, boxes, i[sl], cols[sl], y0[sl], y1[sl], threshold)
        prev = np.concatenate([np.zeros((len(cls), 1), bool), cls], 1)
        nxt = np.concatenate([cls, np.zeros((len(cls), 1), bool)], 1)
        fu, fr = np.nonzero(prev != nxt)  # change before row fr of the region
        cu.append(fu + s)
        ru.append(fr)
    return np.concatenate(cu), np.concatenate(ru)


def exact_columns(masks32, boxes, i, cols, y0, y1, threshold, block: int = 4):
    """Pixel classes of whole region columns by ``grid_sample`` itself: (U, max rows) bool.

    Columns go ``block`` at a time as the channels of ONE input (``N = 1``): torch then samples in
    the calling thread (with ``N > 1`` it wakes its thread pool, milliseconds on a busy machine, for
    a few dozen columns) and every channel at every point of the grid with the same weights, so
    channel ``c`` at grid column ``c`` (the diagonal of the output) is exactly the pasted value of
    column ``c``."""
    h = y1 - y0
    order = np.argsort(h, kind="stable")  # columns of similar heights share a block
    i, cols, y0, y1, h = i[order], cols[order], y0[order], y1[order], h[order]
    u, rows = len(i), int(h[-1])
    r = y0[:, None] + np.arange(rows)
    b = boxes[i]
    grid = np.empty((1, rows, u, 2), np.float32)  # (1, rows, U, 2): x of column c, y of its rows
    grid[0, :, :, 0] = sampling_grid(cols, b[:, 0], b[:, 2])
    grid[0, :, :, 1] = sampling_grid(r, b[:, 1:2], b[:, 3:4]).T
    grid = torch.from_numpy(grid)
    inputs = torch.from_numpy(masks32[i][None])  # (1, U, M, M)
    heights = h.tolist()
    v = np.zeros((u, rows), np.float32)
    for s in range(0, u, block):
        e = min(u, s + block)
        n = heights[e - 1]  # the block's tallest column (sorted)
        out = torch.nn.functional.grid_sample(
            inputs[:, s:e], grid[:, :n, s:e], align_corners=False
        )  # (1, b, n, b)
        v[s:e, :n] = out[0].diagonal(0, 0, 2).numpy().T  # channel c at grid column c
    cls = np.empty_like(v, dtype=bool)
    cls[order] = (v >= threshold) & (r < y1[:, None])
    return cls
