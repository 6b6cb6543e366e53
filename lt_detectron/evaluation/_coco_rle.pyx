# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""COCO's compressed RLE ``counts`` strings, compiled: written from the class changes the mask encoder
finds (:func:`rle_strings`, for :mod:`lt_detectron.evaluation.roi_masks`) and read back for each
mask's box and area (:func:`rle_geometry`, for
:func:`lt_detectron.evaluation.common.mask_boxes_and_areas`).

The format is that of the COCO mask API (``rleToString`` / ``rleFrString``: run lengths in 5-bit
groups, from the fourth run on as the difference to the run two back). :func:`rle_geometry` gives
pycocotools' ``toBbox`` and ``area`` exactly: the run lengths are read as its unsigned 32-bit
integers, the area is the sum of the runs of ones and the box follows ``rleToBbox`` step by step,
without the Python objects pycocotools builds per mask.

Built by ``setup.py`` beside ``_roi_rle.pyx`` (optional: without them the NumPy encoder and
pycocotools give the same strings and values).
"""

import numpy as np

from libc.stdint cimport int64_t, uint32_t
from libc.stdlib cimport free, malloc

ctypedef int64_t i64

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object, Py_ssize_t*) except NULL
    object PyUnicode_DecodeASCII(const char*, Py_ssize_t, const char*)


cdef inline void widen(uint32_t x, uint32_t y, uint32_t* x0, uint32_t* x1, uint32_t* y0,
                       uint32_t* y1) noexcept nogil:
    """Widen the box ``x0..x1, y0..y1`` to take pixel ``(x, y)``."""
    if x < x0[0]:
        x0[0] = x
    if x > x1[0]:
        x1[0] = x
    if y < y0[0]:
        y0[0] = y
    if y > y1[0]:
        y1[0] = y


cdef int geometry(const char* s, Py_ssize_t length, uint32_t h, uint32_t w, double* box,
                  double* area) noexcept nogil:
    """Box (XYWH) and area of one mask; -1 for a string that is not COCO's compressed format."""
    cdef Py_ssize_t p = 0
    cdef long long x
    cdef int k, more, c
    cdef uint32_t prev2 = 0, prev1 = 0, cnt, cc = 0, y = 0, xc = 0, ys0 = 0, xs0 = 0, t, t_last = 0
    cdef long long d
    cdef uint32_t xs = w, ys = h, xe = 0, ye = 0
    cdef Py_ssize_t j = 0
    cdef unsigned long long ones = 0
    while p < length:
        x = 0
        k = 0
        more = 1
        while more:
            if p >= length:
                return -1  # a continued group at the end of the string
            c = s[p] - 48
            if c < 0 or c > 63:
                return -1
            x |= (<long long> (c & 0x1F)) << (5 * k)
            more = c & 0x20
            p += 1
            k += 1
            if k > 12:
                return -1
            if not more and (c & 0x10):
                x |= -(<long long> 1) << (5 * k)
        if j > 2:
            x += prev2
        cnt = <uint32_t> x
        prev2 = prev1
        prev1 = cnt
        # rleToBbox over the pairs (zeros, ones), at pixel t = cc - j % 2 (the first pixel of a run of
        # ones, then its last) in row y of column xc: a step within the column of the last t moves
        # the row, any other step divides
        cc += cnt
        t = cc - <uint32_t> (j & 1)
        d = <long long> t - <long long> t_last
        if j and 0 <= d < h - y:
            y += <uint32_t> d
        else:
            y = t % h
            xc = (t - y) // h
        t_last = t
        if j % 2 == 0:
            ys0 = y
            xs0 = xc
        else:
            ones += cnt
            widen(xs0, ys0, &xs, &xe, &ys, &ye)
            if xs0 < xc:  # a run of ones from one column into the next: every row
                ys = 0
                ye = h - 1
            widen(xc, y, &xs, &xe, &ys, &ye)
        j += 1
    area[0] = <double> ones
    if j < 2:  # no run of ones (rleToBbox drops an unpaired last run)
        box[0] = box[1] = box[2] = box[3] = 0.0
    else:
        box[0] = xs
        box[1] = ys
        box[2] = <double> xe - xs + 1
        box[3] = <double> ye - ys + 1
    return 0


def rle_geometry(list rles):
    """``(boxes (N, 4) XYWH, areas (N,))``, float64, of COCO RLEs ``{"size": (H, W), "counts": str}``
    (``bytes`` counts are read too). Raises ``ValueError`` naming the first entry that is not such an
    RLE with compressed counts."""
    cdef Py_ssize_t n = len(rles), i, length
    cdef const char* s
    cdef long long h, w
    boxes_arr = np.empty((n, 4), np.float64)
    areas_arr = np.empty(n, np.float64)
    cdef double[:, ::1] boxes = boxes_arr
    cdef double[::1] areas = areas_arr
    for i in range(n):
        try:
            rle = rles[i]
            obj = rle["counts"]
            h, w = rle["size"]
        except (TypeError, KeyError, ValueError) as e:
            raise ValueError(f"rle_geometry: entry {i} is not an RLE dict with size and counts") from e
        if isinstance(obj, str):
            s = PyUnicode_AsUTF8AndSize(obj, &length)
        elif isinstance(obj, bytes):
            s = <const char*> (<bytes> obj)
            length = len(<bytes> obj)
        else:
            raise ValueError(f"rle_geometry: entry {i} has {type(obj).__name__} counts, not a string")
        if h <= 0 or w < 0 or h > 0xFFFFFFFF or w > 0xFFFFFFFF:
            raise ValueError(f"rle_geometry: entry {i} has size {h} x {w}")
        if geometry(s, length, <uint32_t> h, <uint32_t> w, &boxes[i, 0], &areas[i]) < 0:
            raise ValueError(f"rle_geometry: entry {i} is not a COCO compressed counts string: {obj[:40]!r}")
    return boxes_arr, areas_arr


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
        out = [None] * n
        start = 0
        for j in range(n):
            out[j] = PyUnicode_DecodeASCII(text + start, ends[j] - start, NULL)
            start = ends[j]
        return out
    finally:
        free(text)
        free(ends)
        free(flips)
