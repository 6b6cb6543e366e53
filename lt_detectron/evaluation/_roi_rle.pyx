# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled kernel of :mod:`lt_detectron.evaluation.roi_masks`: the algorithm of its NumPy path,
one mask and one column at a time instead of whole arrays at once.

:func:`column_flips` gives the class changes of every region column of every mask, decided in
float64 from the two-by-two cells that straddle the threshold; a column where float32 rounding could
decide is not decided here but listed, for ``grid_sample`` to settle. ``_coco_rle.rle_strings``
writes the changes as COCO's compressed ``counts`` strings.

Built by ``setup.py`` (optional: without a C compiler :mod:`.roi_masks` uses its NumPy path, which
gives the same strings). Compiled without floating-point contraction, so every float32 step is
rounded as NumPy and torch round it.
"""

import numpy as np

cimport numpy as cnp
from libc.math cimport INFINITY, fabs, nextafterf
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy

cnp.import_array()

cdef extern from *:
    """
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    #define LT_LITTLE_ENDIAN 0
    #else
    #define LT_LITTLE_ENDIAN 1
    #endif
    """
    int __builtin_ctzll(unsigned long long) nogil
    uint64_t __builtin_bswap64(uint64_t) nogil
    const int LITTLE_ENDIAN "LT_LITTLE_ENDIAN"

ctypedef cnp.int64_t i64

MAX_MASK_SIDE = 62  # a padded row's columns, and a cell column's cells, fit in one 64-bit word


cdef struct Buf:
    i64* data
    Py_ssize_t size
    Py_ssize_t cap


cdef inline int buf_reserve(Buf* b, Py_ssize_t more) except -1 nogil:
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


cdef inline i64 ifloor(double x) noexcept nogil:
    """``floor(x)`` as an integer, without a libm call (|x| < 2^62; the x86-64 baseline has no
    rounding instruction, so ``floor`` is a call per column otherwise)."""
    cdef i64 t = <i64> x
    return t - (x < t)


cdef inline i64 iceil(double x) noexcept nogil:
    """``ceil(x)`` as an integer (as :func:`ifloor`)."""
    cdef i64 t = <i64> x
    return t + (x > t)


cdef inline uint64_t pack8(const uint8_t* flags) noexcept nogil:
    """Eight 0/1 bytes as the bits 0..7 of a word (bit j: ``flags[j]``; one multiply, no carries)."""
    cdef uint64_t x
    memcpy(&x, flags, 8)
    if not LITTLE_ENDIAN:
        x = __builtin_bswap64(x)
    return (x * <uint64_t> 0x0102040810204080ULL) >> 56


cdef inline float float_at_least(double t) noexcept nogil:
    """The least float32 ``>= t`` (-FLT_MAX below its range, +inf above)."""
    cdef float f = <float> t
    if <double> f < t:
        f = nextafterf(f, INFINITY)
    return f


cdef inline float grid(i64 pix, float lo, float hi) noexcept nogil:
    """Detectron2's normalised float32 sampling coordinate of pixel ``pix`` (``_do_paste_mask``)."""
    cdef float half = 0.5, two = 2.0, one = 1.0
    return (((<float> pix) + half) - lo) / (hi - lo) * two - one


cdef inline double source(float g, int m) noexcept nogil:
    """grid_sample's source coordinate (``align_corners=False``), in float64."""
    return (<double> g + 1.0) * (m / 2.0) - 0.5


cdef double cell_error(const double* pad, int mp, i64 k, i64 w, double e_coord,
                       double e_arith) noexcept nogil:
    """The bound on grid_sample's float32 error (``roi_mask_sampling.value_error_bound``) at a point
    of cell ``(k, w)``: the largest differences across and down among the cells its float32 source
    coordinate can fall in (this one and its eight neighbours: padded rows and columns k..k + 3)."""
    cdef i64 r0 = k if k > 0 else 0, c0 = w if w > 0 else 0
    cdef i64 r1 = k + 3 if k + 3 < mp else mp - 1, c1 = w + 3 if w + 3 < mp else mp - 1
    cdef i64 r, c
    cdef double sx = 0.0, sy = 0.0, d
    for r in range(r0, r1 + 1):
        for c in range(c0, c1 + 1):
            if c < c1:
                d = fabs(pad[r * mp + c + 1] - pad[r * mp + c])
                sx = d if d > sx else sx
            if r < r1:
                d = fabs(pad[(r + 1) * mp + c] - pad[r * mp + c])
                sy = d if d > sy else sy
    return e_coord * (sx + sy) + e_arith


def column_flips(
    const float[:, :, ::1] masks,
    const float[:, ::1] boxes,
    const i64[:, ::1] regions,
    const i64[::1] heights,
    double threshold,
    double coord_error,
    double arith_error,
):
    """Class changes of all region columns of all masks (``M <= 62``).

    A value nearer the threshold than ``roi_mask_sampling.value_error_bound`` (``coord_error``,
    ``arith_error``: its constants) makes its column unsure: first against the mask's own bound
    (slopes at most twice its largest |value|), then against the bound of its cell.

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
    cdef double eps, e_coord = coord_error * m, e_arith, dv
    cdef const uint32_t* fbits
    cdef uint32_t a, amax
    cdef float peakf, lo_f, hi_f
    cdef const float* row
    cdef uint8_t hi_flag[64]
    cdef uint8_t lo_flag[64]
    cdef bint s0, unsure, look
    cell_cols = ~(<uint64_t> 0) >> (64 - (m + 1))  # cell columns -1..m-1
    try:  # everything allocated is freed in `finally` (free(NULL) does nothing)
        if pad == NULL or hi_row == NULL or lo_row == NULL or bits == NULL or rows == NULL or iyr == NULL:
            raise MemoryError()
        with nogil:
            for i in range(mp * mp):
                pad[i] = 0.0
            for i in range(64):
                hi_flag[i] = 0
                lo_flag[i] = 0
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
                # the largest |value|, as the largest float32 bit pattern without its sign (one
                # order for all finite floats; a vectorised integer maximum)
                fbits = <const uint32_t*> &masks[i, 0, 0]
                amax = 0
                for q in range(m * m):
                    a = fbits[q] & 0x7FFFFFFF
                    amax = a if a > amax else amax
                memcpy(&peakf, &amax, 4)
                # the mask's own bound: no slope exceeds 2 x the largest |value|
                e_arith = arith_error * peakf
                e_arith = arith_error if e_arith < arith_error else e_arith
                eps = e_coord * 4.0 * peakf + e_arith
                lo_t = threshold - eps
                hi_t = threshold + eps
                # the zeros around the mask: every padded column of a border row, columns 0 and
                # m + 1 of the others
                hi_border = (~(<uint64_t> 0) >> (64 - mp)) if 0.0 >= lo_t else 0
                lo_border = (~(<uint64_t> 0) >> (64 - mp)) if 0.0 < hi_t else 0
                # which side of the threshold each value is on, one bit per padded column: >=
                # threshold - eps (hi) and < threshold + eps (lo); a cell straddles when one of
                # its corners is hi and one lo. Compared in float32 (a flag per value, then eight
                # flags to a byte): for a float v, v >= t exactly when v >= the least float >= t
                lo_f = float_at_least(lo_t)
                hi_f = float_at_least(hi_t)
                for k in range(mp):
                    hb = hi_border
                    lb = lo_border
                    if 0 < k < mp - 1:
                        hb &= (<uint64_t> 1) | ((<uint64_t> 1) << (m + 1))
                        lb &= (<uint64_t> 1) | ((<uint64_t> 1) << (m + 1))
                        row = &masks[i, k - 1, 0]
                        for w in range(m):
                            hi_flag[w] = row[w] >= lo_f
                            lo_flag[w] = row[w] < hi_f
                        for w in range(0, m, 8):  # flags past m are zeros
                            hb |= pack8(&hi_flag[w]) << (w + 1)
                            lb |= pack8(&lo_flag[w]) << (w + 1)
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
                kf = ifloor(iy_first)
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
                    wc = ifloor(ix)
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
                        dv = fabs(v - threshold)
                        unsure = dv < eps and dv < cell_error(pad, mp, kf, wc, e_coord, e_arith)
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
                        dv = fabs(pa - threshold)
                        if fabs(pb - threshold) < dv:
                            dv = fabs(pb - threshold)
                        if dv < eps and dv < cell_error(pad, mp, k, wc, e_coord, e_arith):
                            unsure = True
                        if (pa >= threshold) == (pb >= threshold):
                            continue
                        slope = pb - pa
                        iy_star = k + (threshold - pa) / slope
                        if not (iy_star > iy_first and iy_star <= iy_last):
                            # a change outside the region: the first or last region row may still
                            # lie near it, at a value within rounding of the threshold
                            dv = iy_star - iy_last if iy_star > iy_last else iy_first - iy_star
                            dv *= fabs(slope)
                            if dv < eps and dv < cell_error(pad, mp, k, wc, e_coord, e_arith):
                                unsure = True
                            continue
                        # the first region row at or below the change: a closed-form guess, then
                        # checked against the source rows themselves
                        rt = iceil((iy_star + 0.5) * scale + by0 - 0.5)
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
                        dv = gap * fabs(slope)
                        if dv < eps and dv < cell_error(pad, mp, k, wc, e_coord, e_arith):
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
