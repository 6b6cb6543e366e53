"""The NumPy implementation of :func:`~.roi_masks.encode_roi_masks` (used where the compiled kernels
of ``_roi_rle.pyx`` are not built): the same algorithm on whole arrays of masks, columns and cells at
once. See :mod:`.roi_masks` for the algorithm.
"""

from __future__ import annotations

from typing import List

import numpy as np

from .roi_mask_sampling import (
    exact_changes,
    roi_mask_regions,
    sampling_grid,
    source_coordinate,
    value_error_bound,
)

__all__ = ["encode_numpy", "rle_counts_to_strings"]


def _values(pad: np.ndarray, i: np.ndarray, ix: np.ndarray, iy: np.ndarray) -> np.ndarray:
    """Bilinear value (zero padding) of mask ``i`` at source coordinates ``(ix, iy)``, float64.
    ``pad``: (N, M + 2, M + 2) masks with a border of zeros."""
    m = pad.shape[1] - 2
    w = np.floor(ix)
    n = np.floor(iy)
    ok = (w >= -1) & (w <= m - 1) & (n >= -1) & (n <= m - 1)
    tw, tn = ix - w, iy - n
    wi = np.where(ok, w, 0).astype(np.int64) + 1
    ni = np.where(ok, n, 0).astype(np.int64) + 1
    top = (1 - tw) * pad[i, ni, wi] + tw * pad[i, ni, wi + 1]
    bot = (1 - tw) * pad[i, ni + 1, wi] + tw * pad[i, ni + 1, wi + 1]
    return np.where(ok, (1 - tn) * top + tn * bot, 0.0)


def _chunk_flips(masks32, boxes, heights, widths, threshold):
    """Class-change positions (column-major pixel index) of a chunk of masks: (mask index, position)
    arrays sorted by mask then position, zero-length runs removed."""
    n, m = masks32.shape[0], masks32.shape[1]
    reg = roi_mask_regions(boxes, heights, widths)
    x0, y0, x1, y1 = reg.T
    ncol = np.maximum(x1 - x0, 0) * (y1 > y0)
    pad = np.zeros((n, m + 2, m + 2), np.float32)  # exact copies of the float32 inputs
    pad[:, 1:-1, 1:-1] = masks32
    # one bound on float32 rounding for the chunk: no slope exceeds the range of its values
    lo_v, hi_v = float(min(pad.min(), 0.0)), float(max(pad.max(), 0.0))
    eps = float(value_error_bound(m, hi_v - lo_v, hi_v - lo_v, max(-lo_v, hi_v)))
    # cells (k, w), k, w in -1..m-1, of the padded masks: which straddle the threshold
    # a cell straddles when one corner is >= threshold - eps and one is < threshold + eps
    hi = pad >= threshold - eps
    lo = pad < threshold + eps
    hi_r = hi[:, :-1] | hi[:, 1:]  # over the two rows of a cell
    lo_r = lo[:, :-1] | lo[:, 1:]
    cand = (hi_r[:, :, :-1] | hi_r[:, :, 1:]) & (lo_r[:, :, :-1] | lo_r[:, :, 1:])  # (N, k, w)
    cand_t = cand.transpose(0, 2, 1)  # (N, w, k)
    per_cell_col = np.count_nonzero(cand_t, axis=2).ravel()  # candidates of (mask, w)
    cell_start = np.concatenate([[0], np.cumsum(per_cell_col)[:-1]])
    c_i, c_w, c_k = np.nonzero(cand_t)  # in (mask, w, k) order; w, k shifted by one
    stride = m + 2
    flat = pad.ravel()
    corner = c_i * stride * stride + c_k * stride + c_w  # pad[i, k, w] of cell (k - 1, w - 1)
    # per candidate cell: value at its top-left, top step, bottom-left, bottom step (one row each)
    cell = np.empty((len(corner), 4), np.float64)  # steps in float64: no rounding there
    cell[:, 0] = flat[corner]
    cell[:, 1] = flat[corner + 1].astype(np.float64) - cell[:, 0]
    cell[:, 2] = flat[corner + stride]
    cell[:, 3] = flat[corner + stride + 1].astype(np.float64) - cell[:, 2]
    cand_k = c_k - 1
    # rows: the source coordinate of each mask's first and last region row
    bx0, bx1 = np.ascontiguousarray(boxes[:, 0]), np.ascontiguousarray(boxes[:, 2])
    by0, by1 = np.ascontiguousarray(boxes[:, 1]), np.ascontiguousarray(boxes[:, 3])
    iy_first_m = source_coordinate(sampling_grid(y0, by0, by1), m)
    iy_last_m = source_coordinate(sampling_grid(np.maximum(y1 - 1, y0), by0, by1), m)
    # above the mask's first row (iy < 0) a value is at most (iy + 1) x the mask's peak: the first
    # region row of most masks is zeros without a look
    peak = np.abs(masks32).reshape(n, -1).max(1).astype(np.float64)
    look_m = (iy_first_m + 1) * peak >= threshold - 2 * eps

    # one entry per region column
    total = int(ncol.sum())
    ci = np.repeat(np.arange(n), ncol)
    col = np.arange(total) + np.repeat(x0 - (np.cumsum(ncol) - ncol), ncol)
    ix = source_coordinate(sampling_grid(col, np.repeat(bx0, ncol), np.repeat(bx1, ncol)), m)
    wcell = np.floor(ix)
    live = np.nonzero((wcell >= -1) & (wcell <= m - 1))[0]  # other columns sample only zeros
    ci, col, ix, wcell = ci[live], col[live], ix[live], wcell[live].astype(np.int64)
    # class of each column's first region row
    s0 = np.zeros(len(ci), bool)
    unsure = np.zeros(len(ci), bool)
    look = np.nonzero(look_m[ci])[0]
    if len(look):
        v_first = _values(pad, ci[look], ix[look], iy_first_m[ci[look]])
        s0[look] = v_first >= threshold
        unsure[look] = np.abs(v_first - threshold) < eps
    # (column, candidate segment) pairs, in column then segment order
    key = ci * (m + 1) + (wcell + 1)
    npair = per_cell_col[key]
    pj = np.repeat(np.arange(len(ci)), npair)
    pc = np.arange(len(pj)) + np.repeat(cell_start[key] - (np.cumsum(npair) - npair), npair)
    pk = cand_k[pc]
    tw = np.repeat(ix - wcell, npair)
    cv = cell[pc]
    pa = cv[:, 0] + tw * cv[:, 1]  # the column's value at source row pk
    pb = cv[:, 2] + tw * cv[:, 3]  # ... and at pk + 1
    near = (np.abs(pa - threshold) < eps) | (np.abs(pb - threshold) < eps)
    unsure[pj[near]] = True
    up = pb >= threshold
    cross = (pa >= threshold) != up
    pi = ci[pj]
    # changes between the first and the last region row (decided on the exact source rows: a
    # change too close to either leaves a value within eps of the threshold there, see `unsure`)
    keep = np.nonzero(cross)[0]
    slope = (pb - pa)[keep]
    iy_star = pk[keep] + (threshold - pa[keep]) / slope
    ki = pi[keep]
    inside = (iy_star > iy_first_m[ki]) & (iy_star <= iy_last_m[ki])
    # a change outside the region: the first or last region row may still lie near it, at a value
    # within rounding of the threshold
    out = np.nonzero(~inside)[0]
    edge = np.where(iy_star[out] > iy_last_m[ki[out]], iy_last_m[ki[out]], iy_first_m[ki[out]])
    unsure[pj[keep[out]][np.abs(iy_star[out] - edge) * np.abs(slope[out]) < eps]] = True
    keep, slope, iy_star, ki = keep[inside], slope[inside], iy_star[inside], ki[inside]
    kb0, kb1 = by0[ki], by1[ki]
    r_star = (iy_star + 0.5) * (kb1.astype(np.float64) - kb0) / m + kb0 - 0.5
    rt = np.clip(np.ceil(r_star), y0[ki] + 1, np.maximum(y1[ki] - 1, y0[ki] + 1)).astype(np.int64)
    # the change lies between the source rows of pixel rt - 1 and pixel rt, far enough from both
    iy_b = source_coordinate(sampling_grid(rt - 1, kb0, kb1), m)
    iy_a = source_coordinate(sampling_grid(rt, kb0, kb1), m)
    gap = np.minimum(iy_star - iy_b, iy_a - iy_star) * np.abs(slope)
    kj = pj[keep]
    bad = (iy_b >= iy_star) | (iy_a < iy_star) | (gap < eps)
    same_row = (kj[1:] == kj[:-1]) & (rt[1:] == rt[:-1])  # two changes between the same pixels
    bad[1:] |= same_row
    bad[:-1] |= same_row
    unsure[kj[bad]] = True
    cy0, cy1 = y0[ci], y1[ci]
    # columns decided in float64
    ncross = np.bincount(kj, minlength=len(ci))
    s_end = s0 ^ (ncross % 2 == 1)
    base = col * heights[ci]
    nflip = s0.astype(np.int64) + ncross + s_end
    # exact columns
    uj = np.nonzero(unsure)[0]
    if len(uj):
        fu, fr = exact_changes(masks32, boxes, ci[uj], col[uj], cy0[uj], cy1[uj], threshold)
        exact_pos = base[uj][fu] + cy0[uj][fu] + fr
        nflip[uj] = np.bincount(fu, minlength=len(uj))
    offs = np.concatenate([[0], np.cumsum(nflip)])
    pos = np.empty(offs[-1], np.int64)
    sure = ~unsure
    j = np.nonzero(sure & s0)[0]
    pos[offs[j]] = base[j] + cy0[j]
    kk = sure[kj]
    kjs = kj[kk]
    rank = np.arange(len(kj)) - np.concatenate([[0], np.cumsum(ncross)[:-1]])[kj]
    pos[offs[kjs] + s0[kjs] + rank[kk]] = base[kjs] + rt[kk]
    j = np.nonzero(sure & s_end)[0]
    pos[offs[j + 1] - 1] = base[j] + cy1[j]
    if len(uj):
        pos[
            offs[uj][fu]
            + (np.arange(len(fu)) - np.concatenate([[0], np.cumsum(nflip[uj])[:-1]])[fu])
        ] = exact_pos
    owner = np.repeat(ci, nflip)
    # a column ending on the last image row and the next starting on row 0 meet: no change there;
    # a change at the very end of the image is no change either
    same = np.zeros(len(pos), bool)
    if len(pos) > 1:
        dup = (pos[1:] == pos[:-1]) & (owner[1:] == owner[:-1])
        same[1:] |= dup
        same[:-1] |= dup
    same |= pos == (heights * widths)[owner]
    return owner[~same], pos[~same]


def rle_counts_to_strings(counts: np.ndarray, lengths: np.ndarray) -> List[str]:
    """COCO compressed ``counts`` strings of many RLEs: ``counts`` all run lengths one after the other,
    ``lengths`` how many belong to each RLE (the COCO mask API's ``rleToString``)."""
    counts = np.asarray(counts, np.int64)
    lengths = np.asarray(lengths, np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    local = np.arange(len(counts)) - np.repeat(starts, lengths)
    x = counts.copy()
    later = np.nonzero(local > 2)[0]
    x[later] -= counts[later - 2]
    chars, active = [], []
    more = np.ones(len(x), bool)
    while more.any():
        c = x & 0x1F
        x = x >> 5
        nxt = np.where(c & 0x10, x != -1, x != 0) & more
        chars.append((c | (nxt.astype(np.int64) << 5)) + 48)
        active.append(more)
        more = nxt
    ch = np.stack(chars, 1).astype(np.uint8)
    act = np.stack(active, 1)
    text = ch[act].tobytes().decode("ascii")
    per_count = act.sum(1)
    ends = np.cumsum(per_count)
    bounds = np.concatenate([[0], ends[np.cumsum(lengths) - 1]]) if len(lengths) else [0]
    bounds = np.asarray(bounds)
    return [text[bounds[k] : bounds[k + 1]] for k in range(len(lengths))]


def encode_numpy(m32, b, h, w, threshold) -> List[str]:
    """The ``counts`` strings of masks ``m32`` (N, M, M) float32 in boxes ``b`` (N, 4) float32 of
    images ``h`` x ``w`` (one per mask)."""
    owner, pos = _chunk_flips(m32, b, h, w, threshold)
    # runs: zeros up to the first change, between changes, from the last change to the end
    nflip = np.bincount(owner, minlength=len(m32))
    lengths = nflip + 1
    ends = np.cumsum(lengths)
    allpos = np.empty(ends[-1], np.int64)
    slot = np.ones(ends[-1], bool)
    slot[ends - 1] = False  # the end of each image
    allpos[slot] = pos
    allpos[ends - 1] = h * w
    prev = np.zeros_like(allpos)
    prev[1:] = allpos[:-1]
    prev[np.concatenate([[0], ends[:-1]])] = 0
    return rle_counts_to_strings(allpos - prev, lengths)
