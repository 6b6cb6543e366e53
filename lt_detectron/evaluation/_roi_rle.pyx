# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled kernels of :mod:`lt_detectron.evaluation.roi_masks`: the algorithm of its NumPy path,
one mask and one column at a time instead of whole arrays at once.

- :func:`column_flips`: the class changes of every region column of every mask, decided in float64
  from the two-by-two cells that straddle the threshold; a column where float32 rounding could decide
  is not decided here but listed, for ``grid_sample`` to settle.
- :func:`rle_strings`: COCO's compressed ``counts`` strings from the change positions.

Built by ``setup.py`` (optional: without a C compiler :mod:`.roi_masks` uses its NumPy path, which
gives the same strings). Compiled without floating-point contraction, so every float32 step is
rounded as NumPy and torch round it.
"""

import numpy as np

cimport numpy as cnp
from libc.math cimport ceil, fabs, floor
from libc.stdint cimport uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy

cnp.import_array()

cdef extern from *:
    int __builtin_ctzll(unsigned long long) nogil

ctypedef cnp.int64_t i64

MAX_MASK_SIDE = 62  # a padded row's columns, and a cell column's cells, fit in one 64-bit word


cdef struct Buf:
    i64* data
    Py_ssize_t size
    Py_ssize_t cap


cdef int buf_reserve(Buf* b, Py_ssize_t more) except -1 nogil:
    """Room for ``more`` values after the current ones."""
    cdef i64* p
    cdef Py_ssize_t cap
    if b.size + more <= b.cap:
        return 0
    cap = b.cap * 2 if b.cap else 4096
    while cap < b.size + more:
        cap *= 2
    p = <i64*> realloc(b.data, cap * sizeof(i64))
    if p == NULL:
        with gil:
            raise MemoryError()
    b.data = p
    b.cap = cap
    return 0


cdef object buf_array(Buf* b):
    out = np.empty(b.size, np.int64)
    cdef i64[::1] o = out
    if b.size:
        memcpy(&o[0], b.data, b.size * sizeof(i64))
    return out


cdef inline float grid(i64 pix, float lo, float hi) noexcept nogil:
    """Detectron2's normalised float32 sampling coordinate of pixel ``pix`` (``_do_paste_mask``)."""
    cdef float half = 0.5, two = 2.0, one = 1.0
    return (((<float> pix) + half) - lo) / (hi - lo) * two - one


cdef inline double source(float g, int m) noexcept nogil:
    """grid_sample's source coordinate (``align_corners=False``), in float64."""
    return (<double> g + 1.0) * (m / 2.0) - 0.5


def column_flips(
    const float[:, :, ::1] masks,
    const float[:, ::1] boxes,
    const i64[:, ::1] regions,
    const i64[::1] heights,
    double threshold,
    double eps,
):
    """Class changes of all region columns of all masks (``M <= 62``).

    Returns ``(pos, counts, unsure_mask, unsure_col, unsure_at)``: the column-major pixel index of
    each change decided here (mask, column, row order) and how many each mask has; for the other
    columns, their mask, column and the index of ``pos`` where their changes belong.
    """
    cdef Py_ssize_t n = masks.shape[0], i
    cdef int m = masks.shape[1]
    cdef int mp = m + 2
    if m > MAX_MASK_SIDE:
        raise ValueError(f"column_flips handles masks of side <= {MAX_MASK_SIDE}, got {m}")
    counts_arr = np.zeros(n, np.int64)
    cdef i64[::1] counts = counts_arr
    cdef Buf pos, u_mask, u_col, u_at
    pos.data = u_mask.data = u_col.data = u_at.data = NULL
    pos.size = u_mask.size = u_col.size = u_at.size = 0
    pos.cap = u_mask.cap = u_col.cap = u_at.cap = 0
    cdef i64 max_rows = 1
    for i in range(n):
        if regions[i, 3] - regions[i, 1] + 1 > max_rows:
            max_rows = regions[i, 3] - regions[i, 1] + 1
    # per mask: the mask with a border of zeros (grid_sample's padding), per padded row which values
    # are >= threshold - eps and < threshold + eps (bit c: padded column c), per cell column the cells
    # (k, w), k, w in -1..m-1, that straddle the threshold (bit k + 1 of word w + 1), and the source
    # row of each region row
    cdef double* pad = <double*> malloc(mp * mp * sizeof(double))
    cdef uint64_t* hi_row = <uint64_t*> malloc(mp * sizeof(uint64_t))
    cdef uint64_t* lo_row = <uint64_t*> malloc(mp * sizeof(uint64_t))
    cdef uint64_t* bits = <uint64_t*> malloc((m + 1) * sizeof(uint64_t))
    cdef i64* rows = <i64*> malloc((m + 2) * sizeof(i64))
    cdef double* iyr = <double*> malloc(max_rows * sizeof(double))
    cdef i64 x0, y0, x1, y1, col, k, w, wc, rt, base, ncross, nrows, q, last, kf, start
    cdef uint64_t b, hb, lb, hi_border, lo_border, cell_cols
    cdef float bx0, by0, bx1, by1
    cdef double v, peak, iy_first, iy_last, ix, tw, tnf, top, bot, scale
    cdef double a0, d0, a1, d1, pa, pb, slope, iy_star, iy_b, iy_a, gap, lo_t, hi_t
    cdef bint s0, unsure, look
    lo_t = threshold - eps
    hi_t = threshold + eps
    # the zeros around the mask: every padded column of a border row, columns 0 and m + 1 of the others
    hi_border = (~(<uint64_t> 0) >> (64 - mp)) if 0.0 >= lo_t else 0
    lo_border = (~(<uint64_t> 0) >> (64 - mp)) if 0.0 < hi_t else 0
    cell_cols = ~(<uint64_t> 0) >> (64 - (m + 1))  # cell columns -1..m-1
    try:  # everything allocated is freed in `finally` (free(NULL) does nothing)
        if pad == NULL or hi_row == NULL or lo_row == NULL or bits == NULL or rows == NULL or iyr == NULL:
            raise MemoryError()
        with nogil:
            for i in range(mp * mp):
                pad[i] = 0.0
            for i in range(n):
                x0 = regions[i, 0]
                y0 = regions[i, 1]
                x1 = regions[i, 2]
                y1 = regions[i, 3]
                if x1 <= x0 or y1 <= y0:
                    continue
                start = pos.size
                bx0 = boxes[i, 0]
                by0 = boxes[i, 1]
                bx1 = boxes[i, 2]
                by1 = boxes[i, 3]
                for k in range(m):
                    for w in range(m):
                        pad[(k + 1) * mp + w + 1] = masks[i, k, w]
                # which side of the threshold each value is on, one bit per padded column: >=
                # threshold - eps (hi) and < threshold + eps (lo); a cell straddles when one of
                # its corners is hi and one lo
                for k in range(mp):
                    hb = hi_border
                    lb = lo_border
                    if 0 < k < mp - 1:
                        hb &= (<uint64_t> 1) | ((<uint64_t> 1) << (m + 1))
                        lb &= (<uint64_t> 1) | ((<uint64_t> 1) << (m + 1))
                        for w in range(1, m + 1):
                            v = pad[k * mp + w]
                            hb |= (<uint64_t> (v >= lo_t)) << w
                            lb |= (<uint64_t> (v < hi_t)) << w
                    hi_row[k] = hb
                    lo_row[k] = lb
                for w in range(m + 1):
                    bits[w] = 0
                for k in range(m + 1):  # cell rows -1..m-1: over their two rows, two columns
                    hb = hi_row[k] | hi_row[k + 1]
                    lb = lo_row[k] | lo_row[k + 1]
                    b = (hb | (hb >> 1)) & (lb | (lb >> 1)) & cell_cols
                    while b:
                        w = __builtin_ctzll(b)
                        b &= b - 1
                        bits[w] |= (<uint64_t> 1) << k
                for q in range(y1 - y0):
                    iyr[q] = source(grid(y0 + q, by0, by1), m)
                last = y1 - 1 - y0  # the region's last row
                iy_first = iyr[0]
                iy_last = iyr[last]
                scale = (<double> by1 - by0) / m
                # the class of each column's first region row; above the mask's first row
                # (-1 <= iy < 0) a value is at most (iy + 1) x the first row's peak, so the first
                # region row of most masks is zeros without a look
                kf = <i64> floor(iy_first)
                tnf = iy_first - kf
                look = -1 <= kf <= m - 1
                if kf == -1:
                    peak = 0.0
                    for w in range(m):
                        v = fabs(masks[i, 0, w])
                        peak = v if v > peak else peak
                    look = tnf * peak >= threshold - 2.0 * eps
                for col in range(x0, x1):
                    ix = source(grid(col, bx0, bx1), m)
                    wc = <i64> floor(ix)
                    if wc < -1 or wc > m - 1:
                        continue  # the column samples only zeros
                    tw = ix - wc
                    s0 = False
                    unsure = False
                    if look:
                        q = (kf + 1) * mp + wc + 1
                        top = (1.0 - tw) * pad[q] + tw * pad[q + 1]
                        bot = (1.0 - tw) * pad[q + mp] + tw * pad[q + mp + 1]
                        v = (1.0 - tnf) * top + tnf * bot
                        s0 = v >= threshold
                        unsure = fabs(v - threshold) < eps
                    nrows = 0
                    ncross = 0
                    b = bits[wc + 1]
                    while b:
                        k = __builtin_ctzll(b)  # the next straddling cell of the column, top down
                        b &= b - 1
                        q = k * mp + wc + 1  # cell (k - 1, wc)
                        k -= 1
                        a0 = pad[q]
                        d0 = pad[q + 1] - a0
                        a1 = pad[q + mp]
                        d1 = pad[q + mp + 1] - a1
                        pa = a0 + tw * d0  # the column's value at source row k
                        pb = a1 + tw * d1  # ... and at k + 1
                        if fabs(pa - threshold) < eps or fabs(pb - threshold) < eps:
                            unsure = True
                        if (pa >= threshold) == (pb >= threshold):
                            continue
                        slope = pb - pa
                        iy_star = k + (threshold - pa) / slope
                        if not (iy_star > iy_first and iy_star <= iy_last):
                            continue
                        # the first region row at or below the change: a closed-form guess, then
                        # checked against the source rows themselves
                        rt = <i64> ceil((iy_star + 0.5) * scale + by0 - 0.5)
                        if rt < y0 + 1:
                            rt = y0 + 1
                        if rt > y0 + last:
                            rt = y0 + last
                        while rt > y0 + 1 and iyr[rt - 1 - y0] >= iy_star:
                            rt -= 1
                        while rt < y0 + last and iyr[rt - y0] < iy_star:
                            rt += 1
                        # far enough from the source rows of pixels rt - 1 and rt
                        iy_b = iyr[rt - 1 - y0]
                        iy_a = iyr[rt - y0]
                        gap = iy_star - iy_b
                        if iy_a - iy_star < gap:
                            gap = iy_a - iy_star
                        if gap * fabs(slope) < eps:
                            unsure = True
                        ncross += 1
                        # two changes between the same two pixels (each one in a segment of its
                        # own, both pixels decided as above): the pixels are of one class
                        if nrows and rows[nrows - 1] == rt:
                            nrows -= 1
                        else:
                            rows[nrows] = rt
                            nrows += 1
                    if unsure:
                        buf_reserve(&u_mask, 1)
                        buf_reserve(&u_col, 1)
                        buf_reserve(&u_at, 1)
                        u_mask.data[u_mask.size] = i
                        u_col.data[u_col.size] = col
                        u_at.data[u_at.size] = pos.size
                        u_mask.size += 1
                        u_col.size += 1
                        u_at.size += 1
                        continue
                    buf_reserve(&pos, nrows + 2)
                    base = col * heights[i]
                    if s0:
                        pos.data[pos.size] = base + y0
                        pos.size += 1
                    for q in range(nrows):
                        pos.data[pos.size] = base + rows[q]
                        pos.size += 1
                    if s0 ^ (ncross % 2 == 1):
                        pos.data[pos.size] = base + y1
                        pos.size += 1
                counts[i] = pos.size - start
        return (
            buf_array(&pos),
            counts_arr,
            buf_array(&u_mask),
            buf_array(&u_col),
            buf_array(&u_at),
        )
    finally:
        free(pad)
        free(hi_row)
        free(lo_row)
        free(bits)
        free(rows)
        free(iyr)
        free(pos.data)
        free(u_mask.data)
        free(u_col.data)
        free(u_at.data)


def rle_strings(
    const i64[::1] pos,
    const i64[::1] counts,
    const i64[::1] area,
    const i64[::1] ex_mask=None,
    const i64[::1] ex_at=None,
    const i64[::1] ex_pos=None,
):
    """COCO compressed ``counts`` strings (``rleToString`` of the COCO mask API) of ``len(area)``
    masks from their class-change positions: ``pos`` the column-major pixel indices, increasing
    within a mask, mask after mask, ``counts[j]`` of them for mask ``j``; ``ex_*``: more changes of
    mask ``ex_mask[k]``, at ``ex_pos[k]``, which belong before ``pos[ex_at[k]]`` (as ``numpy.insert``
    would put them; in order). Two changes at the same position (a column ending on the last image
    row, the next starting on row 0) cancel; a change at the very end (``area``) is none."""
    cdef Py_ssize_t n = area.shape[0], total = pos.shape[0], j, s, e, q, c, start, x, L, r
    cdef Py_ssize_t n_ex = 0 if ex_mask is None else ex_mask.shape[0]
    cdef i64 v, prev, cur, run, c1, c2, idx, longest = 0
    cdef bint more
    if len(counts) != n or sum(counts) != total:
        raise ValueError(
            f"rle_strings: {len(counts)} masks with {sum(counts)} changes, given {n} areas and "
            f"{total} positions"
        )
    if n_ex and (ex_at is None or ex_pos is None or ex_at.shape[0] != n_ex or ex_pos.shape[0] != n_ex):
        raise ValueError("rle_strings: ex_mask, ex_at and ex_pos must have one length")
    per_mask = np.asarray(counts).copy()
    if n_ex:
        per_mask += np.bincount(np.asarray(ex_mask), minlength=n)[:n]
    if n:
        longest = int(per_mask.max())
    # at most 13 characters a run length (64 bits in 5-bit groups), one run more than changes
    cdef char* text = <char*> malloc(13 * (total + n_ex + n) + 16)
    cdef Py_ssize_t* ends = <Py_ssize_t*> malloc((n + 1) * sizeof(Py_ssize_t))
    cdef i64* flips = <i64*> malloc((longest + 1) * sizeof(i64))
    try:  # everything allocated is freed in `finally` (free(NULL) does nothing)
        if text == NULL or ends == NULL or flips == NULL:
            raise MemoryError()
        with nogil:
            c = 0
            e = 0
            x = 0
            for j in range(n):
                s = e
                e = s + counts[j]
                # the mask's changes, the extra ones merged in where they belong
                L = 0
                q = s
                while q < e or (x < n_ex and ex_mask[x] == j):
                    if x < n_ex and ex_mask[x] == j and (q >= e or ex_at[x] <= q):
                        flips[L] = ex_pos[x]
                        x += 1
                    else:
                        flips[L] = pos[q]
                        q += 1
                    L += 1
                prev = 0
                idx = 0
                c1 = 0  # the last two run lengths
                c2 = 0
                r = 0
                while True:
                    if r < L:
                        cur = flips[r]
                        if r + 1 < L and flips[r + 1] == cur:
                            r += 2
                            continue
                        r += 1
                        if cur == area[j]:
                            continue
                    elif r == L:
                        cur = area[j]
                        r += 1
                    else:
                        break
                    run = cur - prev
                    prev = cur
                    v = run
                    if idx > 2:
                        v -= c2
                    c2 = c1
                    c1 = run
                    idx += 1
                    more = True
                    while more:
                        cur = v & 0x1F
                        v >>= 5
                        more = (v != -1) if (cur & 0x10) else (v != 0)
                        if more:
                            cur |= 0x20
                        text[c] = <char> (cur + 48)
                        c += 1
                ends[j] = c
        out = []
        start = 0
        for j in range(n):
            out.append(text[start:ends[j]].decode("ascii"))
            start = ends[j]
        return out
    finally:
        free(text)
        free(ends)
        free(flips)
