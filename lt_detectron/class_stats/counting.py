"""Per-class counts of one training dataset, and where they come from.

:func:`count_from_dicts` counts instances and images per class from Detectron2 dataset dicts
(vectorised). :func:`stats_for_dataset` picks the source of a dataset's counts (``metadata``,
``json``, ``counted``, ``cache``, ``table``; see :mod:`lt_detectron.class_stats`): always the counts
of the annotations (given, cached or counted now), the same whether a cache entry exists or not;
an attached table as is only when the annotations are absent. It keeps counted values in
an on-disk cache (``$LT_DETECTRON_CACHE/class_stats``) keyed by the json's path, size, mtime and
``bad_boxes`` policy.
"""

import hashlib
import itertools
import json
import logging
import operator
import os
import time
from typing import Optional, Tuple

import numpy as np

from ..utils.atomic import atomic_write
from ..utils.cache import cache_base
from .groups import lvis_frequency
from .stats import ClassStatsError

__all__ = ["count_from_dicts", "stats_for_dataset"]

logger = logging.getLogger("lt_detectron.class_stats")


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
    cats_a = np.fromiter(
        map(operator.itemgetter("category_id"), anns), dtype=np.int64, count=len(anns)
    )
    crowd = np.fromiter(
        map(dict.get, anns, itertools.repeat("iscrowd"), itertools.repeat(0)),
        dtype=np.int64,
        count=len(anns),
    )
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
    return os.path.join(cache_base(), "class_stats")


def _cache_key(name: str, json_file: str, num_classes: int, bad_boxes: str) -> Optional[str]:
    try:
        st = os.stat(json_file)
    except OSError:
        return None
    key = "%s|%s|%d|%d|%d|%s|v2" % (
        name,
        os.path.abspath(json_file),
        st.st_size,
        st.st_mtime_ns,
        num_classes,
        bad_boxes,
    )
    return hashlib.sha1(key.encode()).hexdigest()[:20]


def _load_cached(key):
    path = os.path.join(_cache_dir(), key + ".json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            d = json.load(f)
        return (
            np.asarray(d["instance_counts"], np.int64),
            np.asarray(d["image_counts"], np.int64),
            int(d["num_images"]),
        )
    except (OSError, ValueError, KeyError):
        return None  # a corrupt cache entry is recounted


def _save_cached(key, inst, img, n):
    d = _cache_dir()
    record = {"instance_counts": inst.tolist(), "image_counts": img.tolist(), "num_images": n}
    try:
        os.makedirs(d, exist_ok=True)
        atomic_write(os.path.join(d, key + ".json"), lambda f: json.dump(record, f), mode="w")
    except OSError as e:  # a read-only home must not stop training
        logger.warning(
            "could not write the class-statistics cache in %s (%s); training goes on without it. Set "
            "LT_DETECTRON_CACHE to a writable folder to keep it.",
            d,
            e,
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
    logger.info(
        "counted class statistics of %s: %d annotations in %.3fs",
        name,
        int(inst.sum()),
        time.perf_counter() - t0,
    )
    return inst, img, n


def _table_arrays(table):
    freq = np.asarray(table["frequency"]) if table.get("frequency") is not None else None
    return (
        np.asarray(table["instance_counts"], np.int64),
        np.asarray(table["image_counts"], np.int64),
        int(table["num_images"]),
        freq,
    )


def _on_disk(json_file) -> bool:
    return bool(json_file) and os.path.isfile(json_file)


def stats_for_dataset(name: str, dataset_dicts=None):
    """Statistics of one dataset (see the module docstring for the sources); the last item is the source."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from ..data.datasets import ensure_dataset_metadata
    from ..data.loading import load_dataset_dicts

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
        raise ClassStatsError(
            "dataset %r has no metadata.thing_classes; cannot build class statistics" % name
        )
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
    if counted is None and dicts is None and table is not None and not _on_disk(json_file):
        # no annotation file to count: the shipped LVIS table (full train split) or counts given at
        # registration (a custom loader without json_file), as is. With a json on disk they are only
        # compared with its counts (below), so the result never depends on the cache.
        inst, img, n, freq = _table_arrays(table)
        source = "metadata"
        if json_file:  # the json is named but absent: say so loudly
            source = "table"
            logger.warning(
                "class statistics of %s: its annotations %s are absent, so its counts come from "
                "metadata.class_stats (for lvis_v1_train / lvis_v0.5_train: the table shipped in "
                "lt_detectron/data/stats, the full train split), NOT counted from annotations. If "
                "the training json is a subset or another version, AP by instance group and the "
                "r/c/f bands are wrong: put the json at that path to count its annotations.",
                name,
                os.path.abspath(json_file),
            )
        freq = lvis_frequency(img) if freq is None else freq
        return classes, dataset_ids, inst, img, n, freq, source
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
                "counts of the annotations.",
                name,
                t_n,
                int(t_inst.sum()),
                n,
                int(inst.sum()),
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
                name,
                json_file,
                int(r_inst.sum()),
                int(inst.sum()),
                j,
                classes[j],
                r_inst[j],
                r_img[j],
                inst[j],
                img[j],
            )
    if freq is None:
        freq = lvis_frequency(img)
    return classes, dataset_ids, inst, img, n, freq, source
