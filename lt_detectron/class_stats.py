"""The class-statistics registry.

Every balancing method and evaluator reads per-class training statistics through this module
and nowhere else. ``get_class_stats(dataset_names)`` returns one immutable :class:`ClassStats`
per tuple of training datasets, built once per process and cached. It is built
deterministically from the same files on every process (and, when ``torch.distributed`` is
initialised, a fingerprint is compared across ranks), so every rank sees identical values.

Sources, in order, for each dataset name:

1. the dataset's metadata: ``MetadataCatalog.get(name).class_stats`` (a dict with
   ``instance_counts``, ``image_counts``, ``num_images``, optional ``frequency``), as our LVIS
   registration attaches from the statistics shipped in the package;
2. LVIS-format category records in ``metadata.json_file`` carrying ``image_count`` and
   ``instance_count`` (every LVIS json does) plus an image count from the json;
3. counted from the registered dataset dicts (``DatasetCatalog.get(name)``) once, vectorised,
   and cached on disk keyed by the json file's path, size and mtime
   (``$LT_DETECTRON_CACHE/class_stats``).

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
    root = os.environ.get("LT_DETECTRON_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "lt_detectron"))
    return os.path.join(root, "class_stats")


def _cache_key(name: str, json_file: str, num_classes: int) -> Optional[str]:
    try:
        st = os.stat(json_file)
    except OSError:
        return None
    key = "%s|%s|%d|%d|%d|v1" % (name, os.path.abspath(json_file), st.st_size, st.st_mtime_ns, num_classes)
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
        logger.warning("could not write the class-statistics cache in %s: %s", d, e)


def _stats_from_json_categories(meta, num_classes):
    """LVIS-format category records with image_count/instance_count, if present."""
    json_file = getattr(meta, "json_file", None) if "json_file" in meta.as_dict() else None
    if not json_file or not os.path.isfile(json_file):
        return None
    with open(json_file) as f:
        data = json.load(f)
    cats = data.get("categories", [])
    if not cats or not all("image_count" in c and "instance_count" in c for c in cats):
        return None
    id_map = meta.thing_dataset_id_to_contiguous_id
    inst = np.zeros(num_classes, np.int64)
    img = np.zeros(num_classes, np.int64)
    freq = np.full(num_classes, "", dtype="<U1")
    for c in cats:
        if c["id"] in id_map:
            j = id_map[c["id"]]
            inst[j] = c["instance_count"]
            img[j] = c["image_count"]
            freq[j] = c.get("frequency", "")
    if len(set(id_map.values())) != num_classes or len([c for c in cats if c["id"] in id_map]) != num_classes:
        return None
    return inst, img, len(data.get("images", [])), (freq if all(freq) else None)


def _stats_for_dataset(name: str):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if name not in DatasetCatalog.list():
        close = [n for n in DatasetCatalog.list() if name.split("_")[0] in n][:8]
        raise ClassStatsError(
            "dataset %r is not registered. Register it first (lt_detectron.data.register_lt_dataset "
            "for COCO/LVIS-format json), or pick a registered name%s"
            % (name, (": e.g. " + ", ".join(close)) if close else "")
        )
    meta = MetadataCatalog.get(name)
    md = meta.as_dict()
    if "thing_classes" not in md:
        # detectron2's builtin registrations set thing_classes lazily on load
        DatasetCatalog.get(name)
        md = meta.as_dict()
    if "thing_classes" not in md:
        raise ClassStatsError("dataset %r has no metadata.thing_classes; cannot build class statistics" % name)
    classes = tuple(meta.thing_classes)
    C = len(classes)
    id_map = md.get("thing_dataset_id_to_contiguous_id", {i: i for i in range(C)})
    inv = {v: k for k, v in id_map.items()}
    dataset_ids = tuple(int(inv.get(i, i)) for i in range(C))
    freq = None
    if "class_stats" in md:
        s = md["class_stats"]
        inst, img, n = (np.asarray(s["instance_counts"], np.int64), np.asarray(s["image_counts"], np.int64), int(s["num_images"]))
        freq = np.asarray(s["frequency"]) if s.get("frequency") is not None else None
        source = "metadata"
    else:
        got = _stats_from_json_categories(meta, C)
        if got is not None:
            inst, img, n, freq = got
            source = "json"
        else:
            json_file = md.get("json_file")
            key = _cache_key(name, json_file, C) if json_file else None
            cached = _load_cached(key) if key else None
            if cached is not None:
                inst, img, n = cached
                source = "cache"
            else:
                t0 = time.perf_counter()
                dicts = DatasetCatalog.get(name)
                t1 = time.perf_counter()
                inst, img, n = count_from_dicts(dicts, C)
                t2 = time.perf_counter()
                logger.info(
                    "counted class statistics of %s: %d annotations in %.3fs (loading the dicts took %.1fs)",
                    name, int(inst.sum()), t2 - t1, t1 - t0,
                )
                if key:
                    _save_cached(key, inst, img, n)
                source = "counted"
    if freq is None:
        freq = lvis_frequency(img)
    return classes, dataset_ids, inst, img, n, freq, source


def build_class_stats(dataset_names: Union[str, Sequence[str]]) -> ClassStats:
    """Build (uncached) the statistics of one or several training datasets with the same classes."""
    names = (dataset_names,) if isinstance(dataset_names, str) else tuple(dataset_names)
    if not names:
        raise ClassStatsError("no training dataset given (cfg.DATASETS.TRAIN is empty)")
    parts = [_stats_for_dataset(n) for n in names]
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


def get_class_stats(dataset_names: Union[str, Sequence[str]], verify_distributed: bool = True) -> ClassStats:
    """The cached :class:`ClassStats` of these training datasets (built and logged on first use)."""
    key = (dataset_names,) if isinstance(dataset_names, str) else tuple(dataset_names)
    if key not in _CACHE:
        t0 = time.perf_counter()
        stats = build_class_stats(key)
        dt = time.perf_counter() - t0
        if verify_distributed:
            _verify_across_ranks(stats)
        logger.info("class statistics built in %.3fs:\n%s", dt, stats.summary())
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
