"""The class-statistics registry.

Every balancing method and evaluator reads per-class training statistics through this module
and nowhere else. ``get_class_stats(dataset_names)`` returns one immutable :class:`ClassStats`
per tuple of training datasets, built once per process and cached. It is built
deterministically from the same files on every process (and, when ``torch.distributed`` is
initialised, a fingerprint is compared across ranks), so every rank sees identical values.

Counts come from the dataset's own annotations (after the ``bad_boxes`` check: dropped boxes
are not counted). The training json is parsed once per process: the trainer loads the dicts
(:func:`lt_detectron.data.loading.load_train_dicts`) and passes them as
``get_class_stats(names, dataset_dicts=...)``. Per dataset name, the ``source`` is:

- ``metadata``: ``MetadataCatalog.get(name).class_stats`` (``instance_counts``,
  ``image_counts``, ``num_images``, optional ``frequency``): the LVIS table shipped for the
  builtin full train splits, or counts given at registration. With dicts it is used only when
  it equals their counts; otherwise (e.g. ``lvis_v1_train`` pointing at a subset json) the
  counts of the annotations are used, with a warning. Without dicts it is used as is.
- ``json``: counted, and equal to the ``image_count``/``instance_count`` of the json's
  category records (LVIS files carry them). Records that disagree (a subset of LVIS keeps the
  full file's records) are ignored with a warning.
- ``counted``: counted from the dicts (given, or one ``DatasetCatalog.get``), vectorised, and
  cached on disk keyed by the json's path, size, mtime and ``bad_boxes`` policy
  (``$LT_DETECTRON_CACHE/class_stats``).
- ``cache``: that cache, when no dicts are given.

The source is in the log line and in :meth:`ClassStats.summary`.

Conventions: contiguous class ids ``0..C-1`` in the order of ``metadata.thing_classes``;
background is ``C`` (Detectron2's convention). ``frequency`` uses LVIS' rule on training
*image* counts: ``r`` <= 10 images, ``c`` 11-100, ``f`` > 100. Instance-count groups use
BAGS' bins on *instance* counts, default edges 10/100/1000, i.e. ``[0,10) [10,100)
[100,1000) [1000,inf)``.
"""
import hashlib
import itertools
import json
import logging
import operator
import os
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = [
    "ClassStats",
    "ClassStatsError",
    "get_class_stats",
    "build_class_stats",
    "count_from_dicts",
    "lvis_frequency",
    "check_num_classes",
    "clear_class_stats_cache",
]

logger = logging.getLogger(__name__)

DEFAULT_GROUP_EDGES = (10, 100, 1000)


class ClassStatsError(ValueError):
    """A dataset's class statistics cannot be built (the message names the problem and the fix)."""


def lvis_frequency(image_counts: np.ndarray) -> np.ndarray:
    """LVIS frequency bands from training image counts: r <= 10, c 11..100, f > 100."""
    image_counts = np.asarray(image_counts)
    out = np.full(image_counts.shape, "c", dtype="<U1")
    out[image_counts <= 10] = "r"
    out[image_counts > 100] = "f"
    return out


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
        source: where the counts came from (``metadata``, ``json``, ``counted``, ``cache``).
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
            raise ClassStatsError("ClassStats.dataset_ids has %d entries for %d classes" % (len(self.dataset_ids), C))
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
        """Instance-count groups ``[(lo, hi, ids)]`` with bins ``[0,e0) [e0,e1) ... [e_k,inf)``.

        Classes with zero instances fall in the first bin (as in BAGS). ``drop_empty`` removes
        bins without classes (BAGS' empty groups would be 1-logit groups).
        """
        edges = [float(e) for e in edges]
        if any(b <= a for a, b in zip(edges, edges[1:])) or any(e <= 0 for e in edges):
            raise ValueError("group edges must be positive and strictly increasing, got %r" % (edges,))
        bounds = [0.0] + edges + [float("inf")]
        groups = []
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            ids = np.nonzero((self.instance_counts >= lo) & (self.instance_counts < hi))[0]
            if len(ids) or not drop_empty:
                groups.append((lo, hi, ids))
        return groups

    def group_index(self, edges: Sequence[float] = DEFAULT_GROUP_EDGES) -> np.ndarray:
        """``(C,)`` index of each class's non-empty instance group (0-based)."""
        out = np.empty(self.num_classes, dtype=np.int64)
        for g, (_, _, ids) in enumerate(self.instance_groups(edges)):
            out[ids] = g
        return out

    # ------------------------------------------------------------------ reporting
    def fingerprint(self) -> str:
        h = hashlib.sha1()
        h.update(json.dumps([list(self.class_names), list(self.dataset_ids), self.num_images]).encode())
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
                "min %d, median %d, max %d" % (
                    self.instance_counts.min(), np.median(self.instance_counts), self.instance_counts.max()
                ) if self.num_classes else "-",
            ),
            (
                "LVIS bands r/c/f",
                "/".join(str(len(self.frequency_ids(b))) for b in "rcf"),
            ),
            (
                "instance groups",
                ", ".join(
                    "[%g,%g): %d" % (lo, hi, len(ids)) for lo, hi, ids in self.instance_groups(edges, drop_empty=False)
                ),
            ),
            ("zero-count classes", str(len(self.zero_count_classes()))),
            ("source", self.source),
        ]
        w = max(len(k) for k, _ in rows)
        return "\n".join("  %s  %s" % (k.ljust(w), v) for k, v in rows)


# ---------------------------------------------------------------------- counting


def count_from_dicts(dataset_dicts, num_classes: int) -> Tuple[np.ndarray, np.ndarray, int]:
    """Count per-class instances and images from Detectron2 dataset dicts.

    ``category_id`` in the dicts must be contiguous (``0..C-1``); crowd annotations are
    skipped. Returns ``(instance_counts, image_counts, num_images)``.
    """
    num_images = len(dataset_dicts)
    per_image = [d.get("annotations") or () for d in dataset_dicts]
    lengths = np.fromiter(map(len, per_image), dtype=np.int64, count=num_images)
    anns = list(itertools.chain.from_iterable(per_image))
    # C-level iteration (map + fromiter): well above 1M annotations/s
    cats_a = np.fromiter(map(operator.itemgetter("category_id"), anns), dtype=np.int64, count=len(anns))
    crowd = np.fromiter(map(dict.get, anns, itertools.repeat("iscrowd"), itertools.repeat(0)), dtype=np.int64, count=len(anns))
    keep = crowd == 0
    cats_a = cats_a[keep]
    imgs_a = np.repeat(np.arange(num_images, dtype=np.int64), lengths)[keep]
    if cats_a.size and (cats_a.min() < 0 or cats_a.max() >= num_classes):
        bad = cats_a[(cats_a < 0) | (cats_a >= num_classes)][0]
        raise ClassStatsError(
            "an annotation has contiguous category id %d, outside 0..%d: the dataset dicts and "
            "metadata.thing_classes disagree (register the dataset with its full category list)"
            % (bad, num_classes - 1)
        )
    instance_counts = np.bincount(cats_a, minlength=num_classes).astype(np.int64)
    if cats_a.size:
        # distinct (image, class) pairs; keys are grouped by image, so sorting is cheap (NumPy 2's
        # hash-based np.unique is ~50x slower on 1M keys)
        keys = np.sort(imgs_a * num_classes + cats_a)
        pairs = keys[np.concatenate(([True], keys[1:] != keys[:-1]))]
        image_counts = np.bincount(pairs % num_classes, minlength=num_classes).astype(np.int64)
    else:
        image_counts = np.zeros(num_classes, dtype=np.int64)
    return instance_counts, image_counts, num_images


def _cache_dir() -> str:
    from .data.embedded import cache_base

    return os.path.join(cache_base(), "class_stats")


def _cache_key(name: str, json_file: str, num_classes: int, bad_boxes: str) -> Optional[str]:
    try:
        st = os.stat(json_file)
    except OSError:
        return None
    key = "%s|%s|%d|%d|%d|%s|v2" % (name, os.path.abspath(json_file), st.st_size, st.st_mtime_ns, num_classes, bad_boxes)
    return hashlib.sha1(key.encode()).hexdigest()[:20]


def _load_cached(key):
    path = os.path.join(_cache_dir(), key + ".json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            d = json.load(f)
        return np.asarray(d["instance_counts"], np.int64), np.asarray(d["image_counts"], np.int64), int(d["num_images"])
    except (OSError, ValueError, KeyError):
        return None  # a corrupt cache entry is recounted


def _save_cached(key, inst, img, n):
    d = _cache_dir()
    try:
        os.makedirs(d, exist_ok=True)
        tmp = os.path.join(d, "%s.%d.tmp" % (key, os.getpid()))
        with open(tmp, "w") as f:
            json.dump({"instance_counts": inst.tolist(), "image_counts": img.tolist(), "num_images": n}, f)
        os.replace(tmp, os.path.join(d, key + ".json"))
    except OSError as e:  # a read-only home must not stop training
        logger.warning(
            "could not write the class-statistics cache in %s (%s); training goes on without it. Set "
            "LT_DETECTRON_CACHE to a writable folder to keep it.", d, e
        )


def _dicts_for(name: str, dataset_dicts):
    """The given dicts of ``name`` (mapping or loader callable), or None."""
    if dataset_dicts is None:
        return None
    if callable(dataset_dicts):
        return dataset_dicts(name)
    return dataset_dicts.get(name)


def _count(name: str, dicts, C: int):
    t0 = time.perf_counter()
    inst, img, n = count_from_dicts(dicts, C)
    logger.info("counted class statistics of %s: %d annotations in %.3fs", name, int(inst.sum()), time.perf_counter() - t0)
    return inst, img, n


def _table_arrays(table):
    freq = np.asarray(table["frequency"]) if table.get("frequency") is not None else None
    return (np.asarray(table["instance_counts"], np.int64), np.asarray(table["image_counts"], np.int64),
            int(table["num_images"]), freq)


def _stats_for_dataset(name: str, dataset_dicts=None):
    """Statistics of one dataset (see the module docstring for the sources); the last item is the source."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from .data.datasets import ensure_dataset_metadata
    from .data.loading import load_dataset_dicts

    if name not in DatasetCatalog.list():
        close = [n for n in DatasetCatalog.list() if name.split("_")[0] in n][:8]
        raise ClassStatsError(
            "dataset %r is not registered. Register it first (lt_detectron.data.register_lt_dataset "
            "for COCO/LVIS-format json), or pick a registered name%s"
            % (name, (": e.g. " + ", ".join(close)) if close else "")
        )
    meta = MetadataCatalog.get(name)
    # names and id map from the json's categories, cheaply (a missing json is fine while no
    # counting is needed: the builtin LVIS train splits have their table)
    cats = ensure_dataset_metadata(name, missing_ok=True)
    dicts = _dicts_for(name, dataset_dicts)
    if "thing_classes" not in meta.as_dict() and dicts is None:
        dicts = load_dataset_dicts(name)  # no json_file: the loader sets thing_classes
    md = meta.as_dict()
    if "thing_classes" not in md:
        raise ClassStatsError("dataset %r has no metadata.thing_classes; cannot build class statistics" % name)
    classes = tuple(meta.thing_classes)
    C = len(classes)
    id_map = md.get("thing_dataset_id_to_contiguous_id", {i: i for i in range(C)})
    inv = {v: k for k, v in id_map.items()}
    dataset_ids = tuple(int(inv.get(i, i)) for i in range(C))
    table = md.get("class_stats")
    json_file = md.get("json_file")
    key = _cache_key(name, json_file, C, md.get("bad_boxes", "drop")) if json_file else None
    freq = None
    counted = None
    if dicts is None and key:
        counted = _load_cached(key)  # counts of these very annotations, from an earlier run
        source = "cache"
    if counted is None and dicts is None and table is not None:
        # the shipped LVIS table (full train split) or counts given at registration: no loading
        inst, img, n, freq = _table_arrays(table)
        return classes, dataset_ids, inst, img, n, (lvis_frequency(img) if freq is None else freq), "metadata"
    if counted is None:
        if dicts is None:
            dicts = load_dataset_dicts(name)
        counted = _count(name, dicts, C)
        source = "counted"
        if key:
            _save_cached(key, *counted)
    inst, img, n = counted
    if table is not None:
        t_inst, t_img, t_n, t_freq = _table_arrays(table)
        if t_n == n and np.array_equal(t_inst, inst) and np.array_equal(t_img, img):
            source, freq = "metadata", t_freq
        else:
            logger.warning(
                "dataset %s: metadata.class_stats (%d images, %d instances) disagree with its annotations "
                "(%d images, %d instances): the json is probably a subset of the full split. Using the "
                "counts of the annotations.", name, t_n, int(t_inst.sum()), n, int(inst.sum()),
            )
    elif cats is not None and cats.count_records() is not None:
        r_img, r_inst = cats.count_records()
        if np.array_equal(np.asarray(r_inst), inst) and np.array_equal(np.asarray(r_img), img):
            source = "json"
            f = [c.get("frequency") for c in cats.categories]
            freq = np.asarray(f) if all(x in ("r", "c", "f") for x in f) else None
        else:
            r_inst, r_img = np.asarray(r_inst), np.asarray(r_img)
            j = int(np.nonzero((r_inst != inst) | (r_img != img))[0][0])
            logger.warning(
                "dataset %s: the image_count/instance_count of the categories in %s disagree with its annotations "
                "(%d vs %d instances in all; first at class %d %r: %d/%d vs %d/%d instances/images): the file is "
                "probably a subset of the file those counts describe. Using the counts of the annotations.",
                name, json_file, int(r_inst.sum()), int(inst.sum()), j, classes[j], r_inst[j], r_img[j], inst[j], img[j],
            )
    if freq is None:
        freq = lvis_frequency(img)
    return classes, dataset_ids, inst, img, n, freq, source


def build_class_stats(dataset_names: Union[str, Sequence[str]], dataset_dicts=None) -> ClassStats:
    """Build (uncached) the statistics of one or several training datasets with the same classes.

    ``dataset_dicts``: the already-loaded dicts, ``{name: list of dicts}`` or a callable
    ``name -> dicts`` (e.g. from :func:`lt_detectron.data.loading.load_train_dicts`); then no
    json is parsed here. Without them a dataset's counts come from its attached table, the
    on-disk cache, or one ``DatasetCatalog.get``.
    """
    names = (dataset_names,) if isinstance(dataset_names, str) else tuple(dataset_names)
    if not names:
        raise ClassStatsError("no training dataset given (cfg.DATASETS.TRAIN is empty)")
    parts = [_stats_for_dataset(n, dataset_dicts) for n in names]
    classes, ids = parts[0][0], parts[0][1]
    for n, p in zip(names[1:], parts[1:]):
        if p[0] != classes:
            raise ClassStatsError(
                "training datasets %r and %r have different class lists (%d vs %d classes); "
                "datasets trained together must share metadata.thing_classes" % (names[0], n, len(classes), len(p[0]))
            )
    inst = sum(p[2] for p in parts)
    img = sum(p[3] for p in parts)
    n_img = sum(p[4] for p in parts)
    freq = parts[0][5] if len(parts) == 1 else lvis_frequency(img)
    source = "+".join(sorted(set(p[6] for p in parts)))
    return ClassStats(names, classes, ids, inst, img, n_img, freq, source)


_CACHE: Dict[Tuple[str, ...], ClassStats] = {}

_SOURCE_TEXT = {
    "metadata": "metadata.class_stats: the shipped LVIS table, or counts given at registration",
    "json": "counted from the annotations; equal to the image_count/instance_count of the json's categories",
    "counted": "counted from the annotations",
    "cache": "counts of the annotations from the on-disk cache, keyed by the json's size and mtime",
}


def _verify_across_ranks(stats: ClassStats):
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        return
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    fps = [None] * dist.get_world_size()
    dist.all_gather_object(fps, stats.fingerprint())
    if len(set(fps)) != 1:
        raise ClassStatsError(
            "class statistics differ across processes (fingerprints %s): every rank must read the "
            "same annotation files" % fps
        )


def get_class_stats(
    dataset_names: Union[str, Sequence[str]], verify_distributed: bool = True, dataset_dicts=None
) -> ClassStats:
    """The cached :class:`ClassStats` of these training datasets (built and logged on first use).

    ``dataset_dicts``: see :func:`build_class_stats` (the trainer passes the dicts it loaded once).
    """
    key = (dataset_names,) if isinstance(dataset_names, str) else tuple(dataset_names)
    if key not in _CACHE:
        t0 = time.perf_counter()
        stats = build_class_stats(key, dataset_dicts)
        dt = time.perf_counter() - t0
        if verify_distributed:
            _verify_across_ranks(stats)
        logger.info(
            "class statistics of %s built in %.3fs, source: %s (%s):\n%s",
            ", ".join(key), dt, stats.source, _SOURCE_TEXT.get(stats.source, "several sources"), stats.summary(),
        )
        _CACHE[key] = stats
    return _CACHE[key]


def clear_class_stats_cache():
    _CACHE.clear()


def check_num_classes(cfg_value: int, stats: ClassStats, key: str):
    """Raise a clear error when a config's class count disagrees with the dataset's."""
    if int(cfg_value) != stats.num_classes:
        raise ClassStatsError(
            "%s = %d but the training data %s has %d classes. Set %s %d in the config (or on the "
            "command line), or train on a dataset with %d classes."
            % (key, cfg_value, ", ".join(stats.dataset_names), stats.num_classes, key, stats.num_classes, cfg_value)
        )
