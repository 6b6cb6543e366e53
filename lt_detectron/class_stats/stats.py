"""``ClassStats``: the immutable per-class training statistics every method and evaluator reads."""

import hashlib
import json
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np

from .groups import DEFAULT_GROUP_EDGES, instance_bins

__all__ = ["ClassStats", "ClassStatsError"]


class ClassStatsError(ValueError):
    """A dataset's class statistics cannot be built (the message names the problem and the fix)."""


def _frozen(a, dtype=None):
    a = np.array(a, dtype=dtype, copy=True)
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class ClassStats:
    """Immutable per-class training statistics of a tuple of training datasets.

    Attributes:
        dataset_names: the training datasets these statistics describe.
        class_names: ``C`` names in contiguous-id order.
        dataset_ids: ``C`` dataset category ids (contiguous id -> id in the json).
        instance_counts: ``(C,)`` int64, training annotations per class (crowd excluded,
            after the dataset's own filtering, before repeat-factor sampling).
        image_counts: ``(C,)`` int64, training images that contain the class.
        num_images: number of training images.
        frequency: ``(C,)`` LVIS bands ``'r'``/``'c'``/``'f'``.
        source: where the counts came from (``metadata``, ``json``, ``counted``, ``cache``, ``file``).
    """

    dataset_names: Tuple[str, ...]
    class_names: Tuple[str, ...]
    dataset_ids: Tuple[int, ...]
    instance_counts: np.ndarray
    image_counts: np.ndarray
    num_images: int
    frequency: np.ndarray
    source: str = "counted"

    def __post_init__(self):
        C = len(self.class_names)
        for name in ("instance_counts", "image_counts", "frequency"):
            v = getattr(self, name)
            if len(v) != C:
                raise ClassStatsError(
                    "ClassStats.%s has %d entries but there are %d classes" % (name, len(v), C)
                )
        if len(self.dataset_ids) != C:
            raise ClassStatsError(
                "ClassStats.dataset_ids has %d entries for %d classes" % (len(self.dataset_ids), C)
            )
        object.__setattr__(self, "instance_counts", _frozen(self.instance_counts, np.int64))
        object.__setattr__(self, "image_counts", _frozen(self.image_counts, np.int64))
        object.__setattr__(self, "frequency", _frozen(self.frequency, "<U1"))

    # ------------------------------------------------------------------ basic facts
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def background_index(self) -> int:
        """Detectron2's convention: background is the last class index, ``C``."""
        return self.num_classes

    @property
    def num_instances(self) -> int:
        return int(self.instance_counts.sum())

    def frequency_ids(self, band: str) -> np.ndarray:
        """Contiguous ids of the classes in LVIS band ``'r'``, ``'c'`` or ``'f'``."""
        if band not in ("r", "c", "f"):
            raise ValueError("frequency band must be 'r', 'c' or 'f', got %r" % (band,))
        return np.nonzero(self.frequency == band)[0]

    def zero_count_classes(self) -> np.ndarray:
        """Contiguous ids of classes with no training instance (methods must guard them)."""
        return np.nonzero(self.instance_counts == 0)[0]

    @property
    def dataset_id_to_contiguous(self) -> Dict[int, int]:
        return {d: i for i, d in enumerate(self.dataset_ids)}

    # ------------------------------------------------------------------ groups
    def instance_groups(
        self, edges: Sequence[float] = DEFAULT_GROUP_EDGES, drop_empty: bool = True
    ) -> List[Tuple[float, float, np.ndarray]]:
        """Instance-count groups ``[(lo, hi, ids)]`` with bins ``[0,e0) [e0,e1) ... [e_k,inf)``
        (:func:`~lt_detectron.class_stats.groups.instance_bins`).

        Classes with zero instances fall in the first bin (as in BAGS). ``drop_empty`` removes
        bins without classes (BAGS' empty groups would be 1-logit groups).
        """
        return instance_bins(self.instance_counts, edges, drop_empty=drop_empty)

    def group_index(self, edges: Sequence[float] = DEFAULT_GROUP_EDGES) -> np.ndarray:
        """``(C,)`` index of each class's non-empty instance group (0-based)."""
        out = np.empty(self.num_classes, dtype=np.int64)
        for g, (_, _, ids) in enumerate(self.instance_groups(edges)):
            out[ids] = g
        return out

    # ------------------------------------------------------------------ reporting
    def fingerprint(self) -> str:
        h = hashlib.sha1()
        h.update(
            json.dumps([list(self.class_names), list(self.dataset_ids), self.num_images]).encode()
        )
        h.update(self.instance_counts.tobytes())
        h.update(self.image_counts.tobytes())
        h.update("".join(self.frequency.tolist()).encode())
        return h.hexdigest()

    def summary(self, edges: Sequence[float] = DEFAULT_GROUP_EDGES) -> str:
        """A short text table: totals, LVIS bands and instance groups."""
        rows = [
            ("datasets", ", ".join(self.dataset_names)),
            ("classes", str(self.num_classes)),
            ("images", str(self.num_images)),
            ("instances", str(self.num_instances)),
            (
                "instances/class",
                "min %d, median %d, max %d"
                % (
                    self.instance_counts.min(),
                    np.median(self.instance_counts),
                    self.instance_counts.max(),
                )
                if self.num_classes
                else "-",
            ),
            (
                "LVIS bands r/c/f",
                "/".join(str(len(self.frequency_ids(b))) for b in "rcf"),
            ),
            (
                "instance groups",
                ", ".join(
                    "[%g,%g): %d" % (lo, hi, len(ids))
                    for lo, hi, ids in self.instance_groups(edges, drop_empty=False)
                ),
            ),
            ("zero-count classes", str(len(self.zero_count_classes()))),
            ("source", self.source),
        ]
        w = max(len(k) for k, _ in rows)
        return "\n".join("  %s  %s" % (k.ljust(w), v) for k, v in rows)
