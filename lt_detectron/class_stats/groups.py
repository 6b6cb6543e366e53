"""The rules that put classes in groups, in one place.

- LVIS frequency bands, on training *image* counts: ``r`` <= 10 images, ``c`` 11-100, ``f`` > 100
  (LVIS v1, Gupta et al. 2019, Sec. 3; the ``frequency`` field of the LVIS files).
- Instance-count groups (BAGS' bins), on training *instance* counts: edges ``e_0 < ... < e_k``
  give the bins ``[0, e_0) [e_0, e_1) ... [e_k, inf)``; default edges 10/100/1000
  (``MODEL.LT.GROUP_EDGES``). A class with ``n`` instances is in bin ``#{e_i <= n}``.

Every user (ClassStats, the evaluators' AP by group and AP1-AP4, the plots, BAGS' layout, the
embedded dataset's bands) calls these functions.
"""

import math
from typing import List, Sequence, Tuple

import numpy as np

__all__ = [
    "LVIS_RARE_MAX_IMAGES",
    "LVIS_COMMON_MAX_IMAGES",
    "DEFAULT_GROUP_EDGES",
    "lvis_frequency",
    "check_group_edges",
    "instance_bin_index",
    "instance_bins",
    "group_label",
]

LVIS_RARE_MAX_IMAGES = 10  # r: at most this many training images
LVIS_COMMON_MAX_IMAGES = 100  # c: more than LVIS_RARE_MAX_IMAGES, at most this many; f: more
DEFAULT_GROUP_EDGES = (10, 100, 1000)


def lvis_frequency(image_counts) -> np.ndarray:
    """LVIS frequency bands (``'r'``/``'c'``/``'f'``, dtype ``<U1``) of training image counts, same shape:
    ``r`` <= 10 images, ``c`` 11..100, ``f`` > 100."""
    image_counts = np.asarray(image_counts)
    out = np.full(image_counts.shape, "c", dtype="<U1")
    out[image_counts <= LVIS_RARE_MAX_IMAGES] = "r"
    out[image_counts > LVIS_COMMON_MAX_IMAGES] = "f"
    return out


def check_group_edges(edges: Sequence[float], name: str = "group edges") -> Tuple[float, ...]:
    """``edges`` as floats; ValueError naming ``name`` unless they are finite, positive and strictly increasing."""
    try:
        out = tuple(float(e) for e in edges)
    except (TypeError, ValueError):
        raise ValueError("%s must be a sequence of numbers, got %r" % (name, edges)) from None
    if any(not math.isfinite(e) or e <= 0 for e in out) or any(
        b <= a for a, b in zip(out, out[1:])
    ):
        raise ValueError(
            "%s must be positive and strictly increasing, got %r" % (name, list(edges))
        )
    return out


def instance_bin_index(
    counts, edges: Sequence[float] = DEFAULT_GROUP_EDGES, name: str = "group edges"
) -> np.ndarray:
    """``(C,)`` int64 bin of each count: ``#{e_i <= n}``, i.e. 0 for ``[0, e_0)`` ... ``k + 1`` for ``[e_k, inf)``."""
    edges = check_group_edges(edges, name)
    return np.searchsorted(
        np.asarray(edges, np.float64), np.asarray(counts, np.float64), side="right"
    ).astype(np.int64)


def instance_bins(
    counts,
    edges: Sequence[float] = DEFAULT_GROUP_EDGES,
    min_count: float = 0,
    drop_empty: bool = False,
    name: str = "group edges",
) -> List[Tuple[float, float, np.ndarray]]:
    """Instance-count groups ``[(lo, hi, ids)]``: ``[min_count, e_0) [e_0, e_1) ... [e_k, inf)``.

    ``ids`` are indices into ``counts`` (ascending). Counts below ``min_count`` are in no bin: 0 keeps
    zero-count classes in the first bin (BAGS' groups, LVIS AP by group); 1 leaves them out (COCO-LT's
    AP1 = ``[1, 10)``); a negative count (unknown) is never binned. ``drop_empty`` removes bins without
    classes; otherwise every bin is listed.
    """
    counts = np.asarray(counts, np.float64).reshape(-1)
    edges = check_group_edges(edges, name)
    if edges and min_count >= edges[0]:
        raise ValueError(
            "min_count %g must be below the first of the %s %r" % (min_count, name, list(edges))
        )
    idx = instance_bin_index(counts, edges, name)
    binned = counts >= max(float(min_count), 0.0)
    bounds = (float(min_count),) + edges + (float("inf"),)
    out = []
    for b, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        ids = np.nonzero((idx == b) & binned)[0]
        if len(ids) or not drop_empty:
            out.append((lo, hi, ids))
    return out


def group_label(lo: float, hi: float) -> str:
    """``'[lo,hi)'`` with integer bounds and ``inf``, e.g. ``'[10,100)'``, ``'[1000,inf)'`` (the ``AP[lo,hi)`` keys)."""
    return "[%d,%s)" % (int(lo), "inf" if math.isinf(hi) else "%d" % int(hi))
